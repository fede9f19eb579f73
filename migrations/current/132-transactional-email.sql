-- Transactional email (receipts, password resets: `messages.purpose`) is not
-- stopped by a marketing unsubscribe — the email subscription flag, or an
-- `unsubscribe` suppression — but is by a bounce, a spam report or an
-- operator's suppression. SMS and WhatsApp keep one rule for both purposes:
-- STOP stops everything (carriers require it).
--
-- The send-time decision applies this (src/messages/decide.ts). Fan-out
-- (herald_hidden.fan_out_batch, not redefined here) skips unsubscribed and
-- suppressed contacts for every purpose; this trigger takes back, as it is
-- written, such a skip of a transactional email when only a marketing
-- unsubscribe stood in the way, so the decision at send time sees it.
-- (A message to allContacts never lists the unsubscribed at all: send
-- transactional email to contacts, lists or tags.)

create or replace function herald_private.tg_deliveries__transactional_email() returns trigger
  language plpgsql volatile
  set search_path = ''
as $$
begin
  if exists (select 1 from herald_public.messages m
              where m.tenant_id = new.tenant_id and m.id = new.message_id and m.purpose = 'transactional')
     and exists (select 1 from herald_public.contacts c
                  where c.tenant_id = new.tenant_id and c.id = new.contact_id and c.email_hash is not null
                    and not exists (select 1 from herald_public.suppressions s
                                     where s.tenant_id = c.tenant_id and s.kind = 'email'
                                       and s.address_hash = c.email_hash and s.reason <> 'unsubscribe')) then
    new.status := 'queued';
    new.reason := null;
    new.run_at := now();
  end if;
  return new;
end;
$$;
comment on function herald_private.tg_deliveries__transactional_email() is
  E'A transactional email that fan-out skipped only for a marketing unsubscribe is queued after all (the send-time decision checks it again).';
drop trigger if exists _130_transactional_email on herald_public.deliveries;
create trigger _130_transactional_email before insert on herald_public.deliveries
  for each row when (new.channel = 'email' and new.status = 'skipped' and new.reason in ('unsubscribed', 'suppressed'))
  execute function herald_private.tg_deliveries__transactional_email();
