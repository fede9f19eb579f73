-- `{{unsubscribe_url}}` in a template: the contact's own unsubscribe link
-- (src/messages/unsubscribe.ts); in a marketing email where the template has
-- none, a footer carries it. The grammar as in 000010, with that one name
-- more; src/messages/render.ts parses the same (test/fixtures/template-grammar.json).

create or replace function herald_hidden.template_variables(body text, field text) returns text[]
  language plpgsql immutable parallel safe
  set search_path = ''
as $$
declare
  v_token text;
  v_names text[] := '{}';
begin
  if body is null then
    return v_names;
  end if;
  for v_token in select m[1] from pg_catalog.regexp_matches(body, '\{\{(.*?)\}\}', 'g') as m loop
    if v_token !~ '^[ \t\r\n]*(first_name|last_name|phone|email|external_id|unsubscribe_url|attributes\.[A-Za-z_][A-Za-z0-9_]*)[ \t\r\n]*(\|[^{}|]*)?$' then
      raise exception 'Unknown template variable "{{%}}" in %: use first_name, last_name, phone, email, external_id, unsubscribe_url or attributes.<name>, optionally with |default', v_token, field
        using errcode = '22023', column = field;
    end if;
    v_names := v_names || pg_catalog.btrim(pg_catalog.split_part(v_token, '|', 1), E' \t\r\n');
  end loop;
  if pg_catalog.regexp_replace(body, '\{\{.*?\}\}', '', 'g') ~ '\{\{|\}\}' then
    raise exception 'Unclosed "{{" or stray "}}" in %', field using errcode = '22023', column = field;
  end if;
  return array(select distinct n from pg_catalog.unnest(v_names) n order by n);
end;
$$;
comment on function herald_hidden.template_variables(text, text) is
  E'The variables a template text uses, sorted; raises 22023 naming `field` for an unknown variable or a stray brace pair. Its cases, shared with src/messages/render.ts: test/fixtures/template-grammar.json.';
