-- Safe HTML (issue 15, item 4): an email template's text part may be left
-- empty when it has an HTML part: the text is then derived from the HTML
-- rendered for each contact (src/messages/html-text.ts). With neither, there
-- is nothing to send: refused when saved, naming `body`. NOT VALID: rows
-- saved before this rule are not rechecked (they fail at send time as before).
--
-- Idempotent: graphile-migrate re-runs it in watch mode.

alter table herald_public.templates drop constraint if exists templates_email_content;
alter table herald_public.templates add constraint templates_email_content
  check (channel <> 'email' or length(body) > 0 or html_body is not null) not valid;
comment on column herald_public.templates.body is
  E'The SMS/WhatsApp text, or the email''s text part (for email, empty: derived from `htmlBody` for each contact).';
comment on column herald_public.templates.html_body is
  E'Email only: the HTML part, stored as given. Contact values are HTML-escaped in it when sent.';
