-- Email sender identity: a reply-to per sender, and per-message overrides of
-- the from name and reply-to (`metadata.fromName`, `metadata.replyTo`),
-- checked here when the message is written (send_message stays as it is: a
-- trigger on messages calls herald_hidden.email_identity_refusal).
-- Which sender a tenant's email goes from: src/providers/routing.ts
-- (emailIdentity) and docs/email.md.

alter table herald_public.email_senders add column if not exists reply_to text;
alter table herald_public.email_senders drop constraint if exists email_senders_reply_to;
alter table herald_public.email_senders add constraint email_senders_reply_to
  check (reply_to operator(pg_catalog.~) '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$' and length(reply_to) <= 254);
comment on column herald_public.email_senders.reply_to is
  E'Where replies to this sender''s email go (the Reply-To header); none: to the sender itself.';
grant insert (reply_to) on herald_public.email_senders to :DATABASE_MEMBER;

-- Why a message's identity overrides are refused (null: they may go).
create or replace function herald_hidden.email_identity_refusal(channel text, metadata jsonb)
  returns text
  language sql immutable
  set search_path = ''
as $$
  select case
    when metadata is null or pg_catalog.jsonb_typeof(metadata) <> 'object'
         or not (metadata ?| array['fromName', 'replyTo']) then null
    when channel <> 'email' then 'metadata.fromName and metadata.replyTo are for email only'
    when metadata ? 'fromName' and (pg_catalog.jsonb_typeof(metadata -> 'fromName') <> 'string'
         or pg_catalog.length(metadata ->> 'fromName') not between 1 and 100
         or (metadata ->> 'fromName') operator(pg_catalog.~) '[[:cntrl:]]')
      then 'metadata.fromName must be a name of 1 to 100 characters, on one line'
    when metadata ? 'replyTo' and (pg_catalog.jsonb_typeof(metadata -> 'replyTo') <> 'string'
         or pg_catalog.length(metadata ->> 'replyTo') > 254
         or (metadata ->> 'replyTo') operator(pg_catalog.!~) '^[^@[:space:][:cntrl:]<>,;]+@[^@[:space:][:cntrl:]<>,;]+\.[^@[:space:][:cntrl:]<>,;]+$')
      then 'metadata.replyTo must be one email address'
  end;
$$;
comment on function herald_hidden.email_identity_refusal(text, jsonb) is
  E'Why `metadata.fromName` / `metadata.replyTo` of a message are refused (null: they are fine). Called by the messages trigger _130_email_identity.';
grant execute on function herald_hidden.email_identity_refusal(text, jsonb) to :DATABASE_MEMBER, :DATABASE_WORKER;

create or replace function herald_private.tg_messages__email_identity() returns trigger
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_refusal text := herald_hidden.email_identity_refusal(new.channel, new.metadata);
begin
  if v_refusal is not null then
    raise exception '%', v_refusal using errcode = '22023', column = 'metadata';
  end if;
  return new;
end;
$$;
drop trigger if exists _130_email_identity on herald_public.messages;
create trigger _130_email_identity before insert on herald_public.messages
  for each row when (new.metadata ?| array['fromName', 'replyTo'])
  execute function herald_private.tg_messages__email_identity();
