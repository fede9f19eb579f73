-- Runs as superuser after graphile-migrate recreates a database (the shadow
-- database of `npm run db:watch`); mirrors src/db/bootstrap.ts.
create extension if not exists pgcrypto with schema public;
create extension if not exists citext with schema public;
revoke create on schema public from public;
grant connect on database :DATABASE_NAME to :DATABASE_AUTHENTICATOR;
