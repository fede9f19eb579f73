-- Approved templates: a Twilio account's Content API templates with their
-- WhatsApp approval status, synced onto the account (provider_accounts), and
-- shown on each template that references one (`templates.approvalStatus`).
-- Idempotent: re-applied on every `db watch` save.

alter table herald_public.provider_accounts
  add column if not exists content_templates jsonb not null default '[]',
  add column if not exists content_synced_at timestamptz,
  add column if not exists content_sync_requested_at timestamptz;
alter table herald_public.provider_accounts drop constraint if exists provider_accounts_content_templates;
alter table herald_public.provider_accounts add constraint provider_accounts_content_templates
  check (jsonb_typeof(content_templates) = 'array' and octet_length(content_templates::text) <= 2000000);
comment on column herald_public.provider_accounts.content_templates is
  E'Twilio accounts: the account''s Content API templates as last synced (`syncContentTemplates`): `sid`, `friendlyName`, `language`, `body`, `variables`, `approvalStatus` (WhatsApp), at most 1,000.';
comment on column herald_public.provider_accounts.content_synced_at is E'When `contentTemplates` was last synced.';
comment on column herald_public.provider_accounts.content_sync_requested_at is E'When a sync was last asked for (`syncContentTemplates`).';

grant select (content_templates, content_synced_at, content_sync_requested_at)
  on herald_public.provider_accounts to :DATABASE_MEMBER, :DATABASE_ADMIN;
grant update (content_templates, content_synced_at) on herald_public.provider_accounts to :DATABASE_WORKER;
grant update (content_sync_requested_at) on herald_public.provider_accounts to :DATABASE_MEMBER;

-- A sync asked for: the provider_accounts__sync_content task lists the account's templates.
drop trigger if exists _500_sync_content on herald_public.provider_accounts;
create trigger _500_sync_content after update of content_sync_requested_at on herald_public.provider_accounts
  for each row when (new.content_sync_requested_at is distinct from old.content_sync_requested_at and new.kind = 'twilio')
  execute function herald_private.tg__add_job('provider_accounts__sync_content');

create or replace function herald_public.sync_content_templates(provider_account_id uuid)
  returns herald_public.provider_accounts
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_account herald_public.provider_accounts;
begin
  if not herald_hidden.current_user_is_tenant_admin() then
    raise exception 'only the tenant''s owners and admins sync provider templates' using errcode = '42501';
  end if;
  update herald_public.provider_accounts a set content_sync_requested_at = now()
   where a.tenant_id = herald_public.current_tenant_id() and a.id = sync_content_templates.provider_account_id
     and a.kind = 'twilio'
  -- Not RETURNING *: members may not select the ciphertext.
  returning tenant_id, id, kind, name, twilio_account_sid, twilio_api_key_sid, secret_hint, status, last_tested_at, last_error,
            created_at, updated_at, content_templates, content_synced_at, content_sync_requested_at
       into v_account.tenant_id, v_account.id, v_account.kind, v_account.name, v_account.twilio_account_sid,
            v_account.twilio_api_key_sid, v_account.secret_hint, v_account.status, v_account.last_tested_at,
            v_account.last_error, v_account.created_at, v_account.updated_at, v_account.content_templates,
            v_account.content_synced_at, v_account.content_sync_requested_at;
  if v_account.id is null then
    raise exception 'Twilio account not found' using errcode = 'NTFND', column = 'providerAccountId';
  end if;
  return v_account;
end;
$$;
comment on function herald_public.sync_content_templates(uuid) is
  E'@resultFieldName providerAccount\nList the Twilio account''s approved templates (Content API) with their WhatsApp approval status, in the background: `contentTemplates` shows them once synced (owners and admins).';
grant execute on function herald_public.sync_content_templates(uuid) to :DATABASE_MEMBER;

-- A template's approval status at the provider, as last synced (null: never synced, or no contentSid).
create or replace function herald_public.templates_approval_status(template herald_public.templates) returns text
  language sql stable
  set search_path = ''
as $$
  select c ->> 'approvalStatus'
    from herald_public.provider_accounts a, pg_catalog.jsonb_array_elements(a.content_templates) c
   where template.content_sid is not null and a.tenant_id = template.tenant_id and a.kind = 'twilio'
     and c ->> 'sid' = template.content_sid
   order by a.status = 'active' desc, a.content_synced_at desc nulls last
   limit 1;
$$;
comment on function herald_public.templates_approval_status(herald_public.templates) is
  E'WhatsApp approval of the provider template `contentSid` names (`approved`, `pending`, `rejected`, `unsubmitted` …), as last synced by `syncContentTemplates`; null if never synced.';
grant execute on function herald_public.templates_approval_status(herald_public.templates) to :DATABASE_MEMBER, :DATABASE_ADMIN;
