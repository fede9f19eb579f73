--
-- Every privilege a request role holds on a table has a policy for that
-- command and role (test/catalog.test.ts checks it from the catalog). Under
-- forced RLS a privilege without one is worse than none: the statement runs,
-- matches no row and reports success.
--

-- sender_numbers.messages_per_second (000006): members and operators were
-- granted UPDATE of a number's pace, but no UPDATE policy existed, so the
-- update silently changed nothing. A number's pace is managed like the number
-- itself: by the tenant's owners and admins (as insert_member and
-- delete_member), and by operators, who assign the system account's numbers.
drop policy if exists update_member on herald_public.sender_numbers;
create policy update_member on herald_public.sender_numbers for update to :DATABASE_MEMBER
  using (tenant_id = (select herald_public.current_tenant_id()) and (select herald_hidden.current_user_is_tenant_admin()))
  with check (tenant_id = (select herald_public.current_tenant_id()));
comment on policy update_member on herald_public.sender_numbers is
  E'A tenant''s owners and admins change their own numbers'' pace (messages_per_second, the only column granted).';

drop policy if exists update_admin on herald_public.sender_numbers;
create policy update_admin on herald_public.sender_numbers for update to :DATABASE_ADMIN
  using (true) with check (true);
comment on policy update_admin on herald_public.sender_numbers is
  E'Operators change any number''s pace (messages_per_second, the only column granted).';

-- tags and lists (000002): the worker was granted UPDATE of their names, with
-- no policy. No task renames a tag or a list (the CSV import creates missing
-- ones with ON CONFLICT DO NOTHING, which needs no UPDATE): the grant goes.
revoke update on herald_public.tags, herald_public.lists from :DATABASE_WORKER;
