-- Meta's WhatsApp Cloud API as a provider kind (docs/whatsapp-cloud-api.md).
--
-- A `meta` provider account holds the WhatsApp Business phone number id and
-- account (WABA) id, the access token (in `secret_encrypted`, like every
-- account's credential) and the app secret that signs Meta's webhooks (in
-- `meta_app_secret_encrypted`), both encrypted under the tenant's data key and
-- write-only through the API; and the hash of the webhook verify token,
-- a random value Herald generates and shows once.
-- Templates may name an approved Meta template, its language and the body
-- parameters (each a Herald template text, filled from the contact).

-- The account -----------------------------------------------------------------

alter table herald_public.provider_accounts
  add column if not exists meta_phone_number_id text,
  add column if not exists meta_waba_id text,
  add column if not exists meta_app_secret_encrypted bytea,
  -- Its own key version: the app secret and the access token are replaced apart.
  add column if not exists meta_key_version smallint,
  add column if not exists meta_verify_token_hash bytea;

alter table herald_public.provider_accounts drop constraint if exists provider_accounts_meta_key_version_fkey;
alter table herald_public.provider_accounts add constraint provider_accounts_meta_key_version_fkey
  foreign key (tenant_id, meta_key_version) references herald_private.tenant_data_keys (tenant_id, version);
comment on constraint provider_accounts_meta_key_version_fkey on herald_public.provider_accounts is E'@behavior -*';

alter table herald_public.provider_accounts drop constraint if exists provider_accounts_kind;
alter table herald_public.provider_accounts add constraint provider_accounts_kind
  check (kind in ('twilio', 'sendgrid', 'meta'));
alter table herald_public.provider_accounts drop constraint if exists provider_accounts_meta_fields;
alter table herald_public.provider_accounts add constraint provider_accounts_meta_fields
  check ((kind = 'meta') = (meta_phone_number_id is not null)
     and (kind = 'meta') = (meta_waba_id is not null)
     and (kind = 'meta') = (meta_app_secret_encrypted is not null)
     and (kind = 'meta') = (meta_key_version is not null)
     and (kind = 'meta') = (meta_verify_token_hash is not null));
alter table herald_public.provider_accounts drop constraint if exists provider_accounts_meta_phone_number_id;
alter table herald_public.provider_accounts add constraint provider_accounts_meta_phone_number_id
  check (meta_phone_number_id ~ '^[0-9]{1,32}$');
alter table herald_public.provider_accounts drop constraint if exists provider_accounts_meta_waba_id;
alter table herald_public.provider_accounts add constraint provider_accounts_meta_waba_id
  check (meta_waba_id ~ '^[0-9]{1,32}$');

comment on column herald_public.provider_accounts.meta_phone_number_id is
  E'Meta (WhatsApp Cloud API): the business phone number id messages are sent from and webhooks name.';
comment on column herald_public.provider_accounts.meta_waba_id is
  E'Meta (WhatsApp Cloud API): the WhatsApp Business Account id.';
comment on column herald_public.provider_accounts.meta_app_secret_encrypted is E'@behavior -*';
comment on column herald_public.provider_accounts.meta_verify_token_hash is E'@behavior -*';
comment on column herald_public.provider_accounts.meta_key_version is E'@behavior -*';

-- Members read the ids (never the secrets); the functions below write them.
grant select (meta_phone_number_id, meta_waba_id) on herald_public.provider_accounts to :DATABASE_MEMBER, :DATABASE_ADMIN;
grant insert (meta_phone_number_id, meta_waba_id, meta_app_secret_encrypted, meta_key_version, meta_verify_token_hash)
  on herald_public.provider_accounts to :DATABASE_MEMBER;
grant update (meta_app_secret_encrypted, meta_key_version, meta_verify_token_hash) on herald_public.provider_accounts to :DATABASE_MEMBER;
-- Key rotation re-encrypts the app secret too.
grant update (meta_app_secret_encrypted, meta_key_version) on herald_public.provider_accounts to :DATABASE_WORKER;

-- The webhook finds a Meta account by the id its URL names before it knows
-- the tenant (herald_private.meta_account_owner, a definer function). Like
-- sender_numbers (a number -> its tenant), this mapping reveals no tenant
-- data: only which tenant an account id (a random uuid) belongs to, and its
-- phone number id. Only Meta accounts; definer functions select no secret.
drop policy if exists select_definer on herald_public.provider_accounts;
create policy select_definer on herald_public.provider_accounts for select to :DATABASE_OWNER using (kind = 'meta');
comment on policy select_definer on herald_public.provider_accounts is
  E'Definer functions (the Meta webhook''s account lookup and verify-token check) read Meta accounts of any tenant.';

drop function if exists herald_public.create_meta_account(text, text, text, text, text);
drop type if exists herald_public.created_meta_account;
create type herald_public.created_meta_account as (
  provider_account_id uuid,
  name text,
  phone_number_id text,
  verify_token text
);
comment on type herald_public.created_meta_account is
  E'A new Meta account, with its webhook verify token: shown this once (Herald keeps only its hash).';

-- A verify token: random, shown once, kept as its SHA-256 (a random 192-bit
-- value needs no key stretching, nor a keyed hash).
create or replace function herald_hidden.new_meta_verify_token()
  returns text
  language sql volatile
  set search_path = ''
as $$
  select 'hvt_' || pg_catalog.encode(public.gen_random_bytes(24), 'hex');
$$;
grant execute on function herald_hidden.new_meta_verify_token() to :DATABASE_MEMBER;

create or replace function herald_public.create_meta_account(
  name text,
  phone_number_id text,
  waba_id text,
  access_token text,
  app_secret text
)
  returns herald_public.created_meta_account
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_version smallint := herald_hidden.current_data_key_version();
  v_key text := herald_hidden.data_key(v_version);
  v_token text := herald_hidden.new_meta_verify_token();
  v_id uuid;
begin
  if access_token is null or length(access_token) < 8 or length(access_token) > 1000 then
    raise exception 'accessToken must be the Graph API access token (8 to 1000 characters)' using errcode = '22023', column = 'accessToken';
  end if;
  if app_secret is null or length(app_secret) < 8 or length(app_secret) > 200 then
    raise exception 'appSecret must be the Meta app secret (8 to 200 characters)' using errcode = '22023', column = 'appSecret';
  end if;
  insert into herald_public.provider_accounts (kind, name, secret_encrypted, secret_hint, key_version,
                                                meta_phone_number_id, meta_waba_id, meta_app_secret_encrypted, meta_key_version, meta_verify_token_hash)
  values ('meta', create_meta_account.name, herald_hidden.encrypt_pii(access_token, v_key), pg_catalog.right(access_token, 4), v_version,
          phone_number_id, waba_id, herald_hidden.encrypt_pii(app_secret, v_key), v_version,
          public.digest(v_token, 'sha256'))
  returning id into v_id;
  return row(v_id, create_meta_account.name, phone_number_id, v_token)::herald_public.created_meta_account;
end;
$$;
comment on function herald_public.create_meta_account(text, text, text, text, text) is
  E'Add a Meta WhatsApp Cloud API account (owners and admins). The access token and app secret are stored encrypted and never returned; `verifyToken` is shown this once: give it to Meta with the webhook URL `/webhooks/meta/<providerAccountId>`. Replace the access token with `setProviderAccountSecret`.';
grant execute on function herald_public.create_meta_account(text, text, text, text, text) to :DATABASE_MEMBER;

create or replace function herald_public.set_meta_app_secret(provider_account_id uuid, app_secret text)
  returns herald_public.provider_accounts
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_version smallint := herald_hidden.current_data_key_version();
  v_account herald_public.provider_accounts;
begin
  if app_secret is null or length(app_secret) < 8 or length(app_secret) > 200 then
    raise exception 'appSecret must be the Meta app secret (8 to 200 characters)' using errcode = '22023', column = 'appSecret';
  end if;
  update herald_public.provider_accounts a
     set meta_app_secret_encrypted = herald_hidden.encrypt_pii(app_secret, herald_hidden.data_key(v_version)),
         meta_key_version = v_version
   where a.tenant_id = herald_public.current_tenant_id() and a.id = provider_account_id and a.kind = 'meta'
  returning a.tenant_id, a.id, a.kind, a.name, a.secret_hint, a.status, a.last_tested_at, a.last_error, a.created_at, a.updated_at,
            a.meta_phone_number_id, a.meta_waba_id
       into v_account.tenant_id, v_account.id, v_account.kind, v_account.name, v_account.secret_hint, v_account.status,
            v_account.last_tested_at, v_account.last_error, v_account.created_at, v_account.updated_at,
            v_account.meta_phone_number_id, v_account.meta_waba_id;
  if v_account.id is null then
    raise exception 'No such Meta account' using errcode = 'NTFND';
  end if;
  return v_account;
end;
$$;
comment on function herald_public.set_meta_app_secret(uuid, text) is
  E'Replace a Meta account''s app secret (write-only), which verifies the signature of Meta''s webhooks.';
grant execute on function herald_public.set_meta_app_secret(uuid, text) to :DATABASE_MEMBER;

create or replace function herald_public.reset_meta_verify_token(provider_account_id uuid)
  returns text
  language plpgsql volatile
  set search_path = ''
as $$
declare
  v_token text := herald_hidden.new_meta_verify_token();
  v_id uuid;
begin
  update herald_public.provider_accounts a
     set meta_verify_token_hash = public.digest(v_token, 'sha256')
   where a.tenant_id = herald_public.current_tenant_id() and a.id = provider_account_id and a.kind = 'meta'
  returning a.id into v_id;
  if v_id is null then
    raise exception 'No such Meta account' using errcode = 'NTFND';
  end if;
  return v_token;
end;
$$;
comment on function herald_public.reset_meta_verify_token(uuid) is
  E'A new webhook verify token for a Meta account, shown this once (the old one stops working).';
grant execute on function herald_public.reset_meta_verify_token(uuid) to :DATABASE_MEMBER;

-- The webhook, before it knows anything: which tenant an account belongs to
-- and its phone number id (the signature is then checked inside the tenant).
create or replace function herald_private.meta_account_owner(provider_account_id uuid)
  returns table (tenant_id uuid, phone_number_id text)
  language sql stable security definer
  set search_path = ''
as $$
  select a.tenant_id, a.meta_phone_number_id
    from herald_public.provider_accounts a
   where a.id = meta_account_owner.provider_account_id and a.kind = 'meta';
$$;
comment on function herald_private.meta_account_owner(uuid) is
  E'The tenant and phone number id of a Meta account, for the webhook that names it.';
revoke all on function herald_private.meta_account_owner(uuid) from public;
grant execute on function herald_private.meta_account_owner(uuid) to :DATABASE_AUTHENTICATOR;

-- The subscription handshake: whether a verify token is the account's (compares hashes; no key needed).
create or replace function herald_private.meta_verify_token_matches(provider_account_id uuid, verify_token text)
  returns boolean
  language sql stable security definer
  set search_path = ''
as $$
  select coalesce((select a.meta_verify_token_hash = public.digest(meta_verify_token_matches.verify_token, 'sha256')
                     from herald_public.provider_accounts a
                    where a.id = meta_verify_token_matches.provider_account_id and a.kind = 'meta'), false);
$$;
comment on function herald_private.meta_verify_token_matches(uuid, text) is
  E'Whether `verify_token` is the Meta account''s webhook verify token.';
revoke all on function herald_private.meta_verify_token_matches(uuid, text) from public;
grant execute on function herald_private.meta_verify_token_matches(uuid, text) to :DATABASE_AUTHENTICATOR;

-- The worker's (and the verified webhook's) view of a Meta account: decrypted, in the session's tenant only.
create or replace function herald_hidden.meta_account_credentials(provider_account_id uuid)
  returns table (access_token text, app_secret text, phone_number_id text, waba_id text)
  language sql stable
  set search_path = ''
as $$
  select herald_hidden.decrypt_pii(a.secret_encrypted, a.key_version),
         herald_hidden.decrypt_pii(a.meta_app_secret_encrypted, a.meta_key_version),
         a.meta_phone_number_id, a.meta_waba_id
    from herald_public.provider_accounts a
   where a.tenant_id = herald_public.current_tenant_id() and a.id = meta_account_credentials.provider_account_id
     and a.kind = 'meta';
$$;
revoke all on function herald_hidden.meta_account_credentials(uuid) from public;
grant execute on function herald_hidden.meta_account_credentials(uuid) to :DATABASE_WORKER;

-- Key rotation: the app secret moves to the new data key with the row's other secrets.
create or replace function herald_hidden.rekey_provider_accounts()
  returns integer
  language sql volatile
  set search_path = ''
as $$
  with target as materialized (
    select herald_hidden.current_data_key_version() as version
  ),
  moved as (
    update herald_public.provider_accounts a
       set secret_encrypted = herald_hidden.encrypt_pii(
             herald_hidden.decrypt_pii(a.secret_encrypted, a.key_version), herald_hidden.data_key(t.version)),
           webhook_public_key_encrypted = herald_hidden.encrypt_pii(
             herald_hidden.decrypt_pii(a.webhook_public_key_encrypted, a.key_version), herald_hidden.data_key(t.version)),
           meta_app_secret_encrypted = herald_hidden.encrypt_pii(
             herald_hidden.decrypt_pii(a.meta_app_secret_encrypted, a.meta_key_version), herald_hidden.data_key(t.version)),
           meta_key_version = case when a.meta_key_version is not null then t.version end,
           key_version = t.version
      from target t
     where a.tenant_id = herald_public.current_tenant_id()
       and (a.key_version <> t.version or a.meta_key_version <> t.version)
    returning 1
  ),
  tests as (
    update herald_hidden.provider_tests p
       set to_address_encrypted = herald_hidden.encrypt_pii(
             herald_hidden.decrypt_pii(p.to_address_encrypted, p.key_version), herald_hidden.data_key(t.version)),
           key_version = t.version
      from target t
     where p.tenant_id = herald_public.current_tenant_id() and p.key_version <> t.version
    returning 1
  )
  -- `tests` runs whether or not it is read (a data-modifying WITH always does).
  select count(*)::integer from moved;
$$;

-- Reports and events from Meta -------------------------------------------------

alter table herald_hidden.provider_reports drop constraint if exists provider_reports_provider;
alter table herald_hidden.provider_reports add constraint provider_reports_provider
  check (provider in ('twilio', 'sendgrid', 'meta'));
alter table herald_public.delivery_events drop constraint if exists delivery_events_provider;
alter table herald_public.delivery_events add constraint delivery_events_provider
  check (provider in ('twilio', 'sendgrid', 'meta'));

-- Templates that name an approved Meta template ---------------------------------

alter table herald_public.templates
  add column if not exists whatsapp_template_name text,
  add column if not exists whatsapp_template_language text,
  add column if not exists whatsapp_template_parameters text[] not null default '{}';

alter table herald_public.templates drop constraint if exists templates_whatsapp_template;
alter table herald_public.templates add constraint templates_whatsapp_template
  check ((whatsapp_template_name is null) = (whatsapp_template_language is null)
     and (whatsapp_template_name is null or channel = 'whatsapp')
     and (whatsapp_template_name is not null or pg_catalog.cardinality(whatsapp_template_parameters) = 0));
alter table herald_public.templates drop constraint if exists templates_whatsapp_template_name;
alter table herald_public.templates add constraint templates_whatsapp_template_name
  check (whatsapp_template_name ~ '^[a-z0-9_]+$' and length(whatsapp_template_name) <= 512);
alter table herald_public.templates drop constraint if exists templates_whatsapp_template_language;
alter table herald_public.templates add constraint templates_whatsapp_template_language
  check (whatsapp_template_language ~ '^[a-z]{2,3}(_[A-Z]{2})?$');
alter table herald_public.templates drop constraint if exists templates_whatsapp_template_parameters;
alter table herald_public.templates add constraint templates_whatsapp_template_parameters
  check (pg_catalog.cardinality(whatsapp_template_parameters) <= 20
     and pg_catalog.length(pg_catalog.array_to_string(whatsapp_template_parameters, '')) <= 4000
     and pg_catalog.array_position(whatsapp_template_parameters, null) is null);

comment on column herald_public.templates.whatsapp_template_name is
  E'WhatsApp through a Meta account: the approved Meta template sent instead of the body (e.g. `order_update`).';
comment on column herald_public.templates.whatsapp_template_language is
  E'The Meta template''s language code (e.g. `en_US`).';
comment on column herald_public.templates.whatsapp_template_parameters is
  E'The Meta template''s body parameters in order ({{1}}, {{2}}, …), each a text with Herald variables such as `{{first_name|there}}`.';

grant insert (whatsapp_template_name, whatsapp_template_language, whatsapp_template_parameters)
  on herald_public.templates to :DATABASE_MEMBER;
grant update (whatsapp_template_name, whatsapp_template_language, whatsapp_template_parameters)
  on herald_public.templates to :DATABASE_MEMBER;
