-- Password sign-in limits that an attacker cannot turn against the account's
-- owner. Before, ten wrong passwords a minute for an email, from anywhere,
-- refused the real user too. Now:
--   * per (account, client address): 10 attempts a minute;
--   * per client address: 60 a minute (password spraying across accounts);
--   * per account, for clients that have never signed in to it: a slower
--     curve, a bucket of 30 attempts that drains 2 a minute. Clients the
--     account signed in from successfully in the last 90 days skip it, so an
--     attacker rotating addresses locks out only other unknown addresses.
-- Accounts and clients are named by keyed hashes Herald computes (no email, and no
-- address next to an account).
--
-- Idempotent: re-applied on every `db watch` save.

create unlogged table if not exists herald_private.login_buckets (
  scope text primary key,
  level double precision not null,
  updated_at timestamptz not null
);

create table if not exists herald_private.login_known_clients (
  -- HMAC(account hash ‖ client address), from Herald (src/api/login-limits.ts).
  account_client text primary key,
  last_success_at timestamptz not null
);
create index if not exists login_known_clients_stale on herald_private.login_known_clients (last_success_at);

-- One attempt against a leaky bucket: `capacity` attempts, draining
-- `per_minute`. Answers 0 while within it, else the seconds until one more
-- fits. Refused attempts count too (hammering keeps it full), up to twice the
-- capacity, so it empties within a bounded time once they stop. Buckets
-- drained for an hour are swept a few at a time by new ones.
create or replace function herald_private.admit_bucket(scope text, capacity integer, per_minute double precision) returns integer
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_now timestamptz := pg_catalog.clock_timestamp();
  v_level double precision;
begin
  perform pg_catalog.set_config('synchronous_commit', 'off', true);
  insert into herald_private.login_buckets as b (scope, level, updated_at)
  values (admit_bucket.scope, 1, v_now)
  on conflict on constraint login_buckets_pkey do update
    set level = least(2 * admit_bucket.capacity,
                      greatest(0, b.level - extract(epoch from (v_now - b.updated_at)) / 60 * admit_bucket.per_minute) + 1),
        updated_at = v_now
  returning b.level into v_level;
  if v_level = 1 then
    delete from herald_private.login_buckets o
     where o.scope = any (array(select s.scope from herald_private.login_buckets s
                                 where s.updated_at < v_now - interval '1 hour'
                                 limit 20 for update skip locked));
  end if;
  if v_level <= admit_bucket.capacity then
    return 0;
  end if;
  return greatest(1, ceil((v_level - admit_bucket.capacity) / admit_bucket.per_minute * 60))::integer;
end;
$$;

-- One sign-in attempt: the seconds to wait, or 0 to go ahead.
create or replace function herald_private.admit_login(account text, client text, account_client text) returns integer
  language plpgsql volatile security definer
  set search_path = ''
as $$
declare
  v_wait integer;
begin
  v_wait := greatest(herald_private.admit('login:pair:' || admit_login.account_client, 10),
                     herald_private.admit('login:client:' || admit_login.client, 60));
  if not exists (select 1 from herald_private.login_known_clients k
                  where k.account_client = admit_login.account_client
                    and k.last_success_at > pg_catalog.now() - interval '90 days') then
    v_wait := greatest(v_wait, herald_private.admit_bucket('login:account:' || admit_login.account, 30, 2));
  end if;
  return v_wait;
end;
$$;

-- After a successful sign-in: this client is the account's own for 90 days.
create or replace function herald_private.remember_login_client(account_client text) returns void
  language sql volatile security definer
  set search_path = ''
as $$
  delete from herald_private.login_known_clients o
   where o.account_client = any (array(select s.account_client from herald_private.login_known_clients s
                                        where s.last_success_at < pg_catalog.now() - interval '90 days'
                                        limit 20 for update skip locked));
  insert into herald_private.login_known_clients as k (account_client, last_success_at)
  values (remember_login_client.account_client, pg_catalog.now())
  on conflict on constraint login_known_clients_pkey do update set last_success_at = excluded.last_success_at;
$$;

revoke execute on function herald_private.admit_bucket(text, integer, double precision),
  herald_private.admit_login(text, text, text), herald_private.remember_login_client(text) from public;
grant execute on function herald_private.admit_login(text, text, text), herald_private.remember_login_client(text)
  to :DATABASE_AUTHENTICATOR;
