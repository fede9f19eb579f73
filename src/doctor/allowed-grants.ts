/**
 * The reviewed privileges of the request roles, relation by relation: what
 * `herald doctor` accepts (src/doctor/grants.ts). Any privilege the database
 * holds beyond these, in any schema, is a finding. A migration that grants
 * something new adds it here in the same change, where review sees it;
 * `npm run herald -- doctor --print-grants` prints the database's grants in
 * this format. "SELECT" covers the whole relation, "INSERT(a, b)" those
 * columns only. TRUNCATE is never listed: it ignores row-level security.
 */

export type RoleKey = "authenticator" | "member" | "admin" | "worker";

export const ALLOWED_GRANTS: Record<string, Partial<Record<RoleKey, string[]>>> = {
  "herald_hidden.message_segment_members": {
    admin: ["SELECT"],
    worker: ["DELETE", "INSERT(contact_id, message_id, tenant_id)", "SELECT"],
  },
  "herald_hidden.monthly_usage": {
    member: ["SELECT"],
    admin: ["SELECT"],
    worker: ["INSERT(messages, month, tenant_id)", "SELECT", "UPDATE(messages)"],
  },
  "herald_hidden.pings": {
    member: ["INSERT(tenant_id)", "SELECT"],
    admin: ["DELETE", "SELECT"],
    worker: ["SELECT", "UPDATE(answered_at, answered_by)"],
  },
  "herald_hidden.provider_reports": {
    admin: ["SELECT(received_at, tenant_id)"],
    worker: ["DELETE", "INSERT(address_encrypted, channel, dedupe_key, delivery_id, error_code, event, key_version, occurred_at, opt_out, provider, provider_message_id, status, tenant_id, url)", "SELECT"],
  },
  "herald_hidden.provider_tests": {
    member: ["INSERT(key_version, provider_account_id, to_address_encrypted)", "SELECT"],
    admin: ["SELECT"],
    worker: ["SELECT", "UPDATE(error, finished_at, key_version, to_address_encrypted)"],
  },
  "herald_hidden.send_plans": {
    member: ["SELECT"],
    admin: ["SELECT"],
    worker: ["INSERT(next_at, scope, tenant_id)", "SELECT", "UPDATE(next_at)"],
  },
  "herald_hidden.sender_number_checks": {
    member: ["SELECT"],
    admin: ["SELECT"],
    worker: ["INSERT(action, channel, details, owned, phone_number, provider_account_id, reason, sender_number_id, tenant_id)", "SELECT"],
  },
  "herald_public.api_keys": {
    member: ["INSERT(created_by, name, secret_hash, tenant_id, token_prefix)", "SELECT(created_at, created_by, id, last_used_at, name, revoked_at, tenant_id, token_prefix, updated_at)", "UPDATE(name, revoked_at)"],
    admin: ["DELETE", "INSERT", "SELECT", "UPDATE"],
  },
  "herald_public.audit_log": {
    member: ["SELECT"],
    admin: ["SELECT"],
  },
  "herald_public.consent_events": {
    member: ["SELECT"],
    admin: ["SELECT"],
    worker: ["INSERT(action, channel, contact_id, detail, inbound_message_id, source, tenant_id)", "SELECT"],
  },
  "herald_public.contact_tags": {
    member: ["DELETE", "INSERT(contact_id, tag_id, tenant_id)", "SELECT"],
    admin: ["DELETE", "SELECT"],
    worker: ["INSERT(contact_id, tag_id, tenant_id)", "SELECT"],
  },
  "herald_public.contacts": {
    member: ["DELETE", "INSERT(attributes, created_by_send, email_encrypted, email_hash, email_subscribed, external_id, first_name, hash_version, id, key_version, last_name, locale, phone_encrypted, phone_hash, sms_subscribed, tenant_id, timezone, whatsapp_subscribed)", "SELECT", "UPDATE(attributes, email_encrypted, email_hash, email_subscribed, external_id, first_name, hash_version, key_version, last_name, locale, phone_encrypted, phone_hash, sms_subscribed, timezone, whatsapp_subscribed)"],
    admin: ["DELETE", "SELECT"],
    worker: ["INSERT(attributes, created_by_inbound, email_encrypted, email_hash, email_subscribed, external_id, first_name, hash_version, id, key_version, last_name, locale, phone_encrypted, phone_hash, sms_subscribed, tenant_id, timezone, whatsapp_subscribed)", "SELECT", "UPDATE(attributes, email_encrypted, email_hash, email_subscribed, external_id, first_name, hash_version, key_version, last_name, locale, phone_encrypted, phone_hash, sms_subscribed, timezone, whatsapp_subscribed)"],
  },
  "herald_public.daily_usage": {
    member: ["SELECT"],
    admin: ["SELECT"],
  },
  "herald_public.deliveries": {
    member: ["SELECT"],
    admin: ["SELECT"],
    worker: ["INSERT(channel, contact_id, message_id, reason, run_at, status, tenant_id)", "SELECT", "UPDATE(attempts, claimed_at, claimed_by, completed_at, content_encrypted, content_key_version, content_sha256, counted_month, error_code, from_address, hold_reason, provider, provider_account_id, provider_message_id, read_at, reason, run_at, segments, sent_at, status, status_checked_at)"],
  },
  "herald_public.delivery_engagement": {
    member: ["SELECT"],
    admin: ["SELECT"],
    worker: ["SELECT"],
  },
  "herald_public.delivery_events": {
    member: ["SELECT"],
    admin: ["SELECT"],
    worker: ["INSERT(applied, dedupe_key, delivery_id, error_code, event, occurred_at, provider, received_at, status, tenant_id, url)", "SELECT"],
  },
  "herald_public.email_domains": {
    member: ["DELETE", "INSERT(domain, provider_account_id, tenant_id)", "SELECT", "UPDATE(verify_requested_at)"],
    admin: ["DELETE", "SELECT"],
    worker: ["SELECT", "UPDATE(dns_records, last_checked_at, last_error, sendgrid_domain_id, status)"],
  },
  "herald_public.email_senders": {
    member: ["DELETE", "INSERT(from_email, from_name, provider_account_id, reply_to, tenant_id)", "SELECT"],
    admin: ["DELETE", "SELECT"],
    worker: ["SELECT"],
  },
  "herald_public.inbound_messages": {
    member: ["DELETE", "SELECT"],
    admin: ["DELETE", "SELECT"],
    worker: ["INSERT(account, auto_reply, body_encrypted, channel, contact_id, from_encrypted, key_version, keyword, media_count, provider_account_id, provider_message_id, sender_number_id, tenant_id, to_number)", "SELECT", "UPDATE(body_encrypted, from_encrypted, key_version, media_types, media_urls)"],
  },
  "herald_public.invitations": {
    member: ["INSERT(email, invited_by, role, tenant_id, token_hash)", "SELECT(accepted_at, accepted_by, created_at, email, expires_at, id, invited_by, revoked_at, role, tenant_id, updated_at)", "UPDATE(accepted_by, presented_token, revoked_at)"],
    admin: ["DELETE", "SELECT(accepted_at, accepted_by, created_at, email, expires_at, id, invited_by, revoked_at, role, tenant_id, updated_at)"],
  },
  "herald_public.list_members": {
    member: ["DELETE", "INSERT(contact_id, list_id, tenant_id)", "SELECT"],
    admin: ["DELETE", "SELECT"],
    worker: ["INSERT(contact_id, list_id, tenant_id)", "SELECT"],
  },
  "herald_public.lists": {
    member: ["DELETE", "INSERT(description, id, name, tenant_id)", "SELECT", "UPDATE(description, name)"],
    admin: ["DELETE", "SELECT"],
    worker: ["INSERT(description, id, name, tenant_id)", "SELECT"],
  },
  "herald_public.memberships": {
    member: ["DELETE", "SELECT", "UPDATE(role)"],
    admin: ["SELECT"],
    worker: ["SELECT"],
  },
  "herald_public.messages": {
    member: ["INSERT(all_contacts, body, channel, contact_ids, created_by, html_body, idempotency_key, list_ids, media_urls, metadata, purpose, request_fingerprint, scheduled_at, segment_ids, subject, tag_ids, template_id, tenant_id)", "SELECT", "UPDATE(canceled_at)"],
    admin: ["SELECT"],
    worker: ["SELECT", "UPDATE(fan_out_cursor, fanned_out_at, recipient_count, status)"],
  },
  "herald_public.messaging_services": {
    member: ["DELETE", "INSERT(is_default, messages_per_second, name, provider_account_id, service_sid, tenant_id)", "SELECT", "UPDATE(is_default, messages_per_second, name, sync_requested_at)"],
    admin: ["DELETE", "SELECT"],
    worker: ["SELECT", "UPDATE(last_error, last_synced_at, status)"],
  },
  "herald_public.number_requests": {
    member: ["INSERT(idempotency_key, kind, params, provider_account_id, sender_number_id, tenant_id)", "SELECT"],
    admin: ["SELECT"],
    worker: ["SELECT", "UPDATE(completed_at, error, result, status)"],
  },
  "herald_public.provider_accounts": {
    member: ["DELETE", "INSERT(key_version, kind, meta_app_secret_encrypted, meta_key_version, meta_phone_number_id, meta_verify_token_hash, meta_waba_id, name, secret_encrypted, secret_hint, tenant_id, twilio_account_sid, twilio_api_key_sid, webhook_public_key_encrypted)", "SELECT(content_sync_requested_at, content_synced_at, content_templates, created_at, id, kind, last_error, last_tested_at, meta_phone_number_id, meta_waba_id, name, secret_hint, status, tenant_id, twilio_account_sid, twilio_api_key_sid, updated_at)", "UPDATE(content_sync_requested_at, key_version, meta_app_secret_encrypted, meta_key_version, meta_verify_token_hash, name, secret_encrypted, secret_hint, status, webhook_public_key_encrypted)"],
    admin: ["DELETE", "SELECT(content_sync_requested_at, content_synced_at, content_templates, created_at, id, kind, last_error, last_tested_at, meta_phone_number_id, meta_waba_id, name, secret_hint, status, tenant_id, twilio_account_sid, twilio_api_key_sid, updated_at)", "UPDATE(last_error, last_tested_at, status)"],
    worker: ["SELECT", "UPDATE(content_synced_at, content_templates, key_version, last_error, last_tested_at, meta_app_secret_encrypted, meta_key_version, secret_encrypted, status, webhook_public_key_encrypted)"],
  },
  "herald_public.segments": {
    member: ["DELETE", "INSERT(description, filter, name, tenant_id)", "SELECT", "UPDATE(description, filter, name)"],
    admin: ["DELETE", "SELECT"],
    worker: ["SELECT"],
  },
  "herald_public.sender_numbers": {
    member: ["DELETE", "INSERT(channel, messages_per_second, phone_number, provider_account_id, tenant_id)", "SELECT", "UPDATE(messages_per_second, verify_requested_at)"],
    admin: ["DELETE", "INSERT(channel, messages_per_second, phone_number, provider_account_id, tenant_id)", "SELECT", "UPDATE(messages_per_second, verify_requested_at)"],
    worker: ["DELETE", "INSERT(channel, messages_per_second, messaging_service_id, phone_number, provider_account_id, status, tenant_id)", "SELECT", "UPDATE(messaging_service_id, status)"],
  },
  "herald_public.suppressions": {
    member: ["DELETE", "INSERT(address_encrypted, address_hash, hash_version, key_version, kind, note, reason, tenant_id)", "SELECT"],
    admin: ["DELETE", "SELECT"],
    worker: ["DELETE", "INSERT(address_encrypted, address_hash, hash_version, key_version, kind, note, reason, tenant_id)", "SELECT", "UPDATE(address_encrypted, address_hash, hash_version, key_version)"],
  },
  "herald_public.tags": {
    member: ["DELETE", "INSERT(id, name, tenant_id)", "SELECT", "UPDATE(name)"],
    admin: ["DELETE", "SELECT"],
    worker: ["INSERT(id, name, tenant_id)", "SELECT"],
  },
  "herald_public.templates": {
    member: ["DELETE", "INSERT(body, channel, content_sid, content_variables, html_body, id, media_urls, name, subject, tenant_id, whatsapp_template_language, whatsapp_template_name, whatsapp_template_parameters)", "SELECT", "UPDATE(body, content_sid, content_variables, html_body, media_urls, name, subject, whatsapp_template_language, whatsapp_template_name, whatsapp_template_parameters)"],
    admin: ["DELETE", "SELECT"],
    worker: ["SELECT"],
  },
  "herald_public.tenant_settings": {
    member: ["SELECT", "UPDATE(business_name, default_country, fallback_to_system, help_disclaimer, help_text, message_frequency, monthly_message_cap, program_description, rate_batch_interval_seconds, rate_batch_size, send_window_end, send_window_start, sms_double_opt_in, sms_from, start_reply, stop_reply, support_email, support_phone, support_website, timezone)"],
    admin: ["DELETE", "INSERT(tenant_id)", "SELECT", "UPDATE(api_requests_per_minute, business_name, default_country, fallback_to_system, help_disclaimer, help_text, message_frequency, monthly_message_cap, program_description, rate_batch_interval_seconds, rate_batch_size, send_window_end, send_window_start, sms_double_opt_in, sms_from, start_reply, stop_reply, support_email, support_phone, support_website, timezone)"],
    worker: ["SELECT"],
  },
  "herald_public.tenants": {
    member: ["SELECT"],
    admin: ["DELETE", "INSERT(name, slug, status)", "SELECT", "UPDATE(name, status, suspended_at, suspension_reason)"],
    worker: ["SELECT"],
  },
  "herald_public.users": {
    member: ["SELECT", "UPDATE(display_name)"],
    admin: ["DELETE", "INSERT(display_name, email)", "SELECT", "UPDATE(display_name, email)"],
    worker: ["SELECT"],
  },
  "herald_public.webhook_deliveries": {
    member: ["INSERT(endpoint_id, event_id, event_type, payload, replay_of, tenant_id)", "SELECT"],
    admin: ["SELECT"],
    worker: ["SELECT", "UPDATE(attempts, delivered_at, hold_reason, last_attempt_at, last_error, response_status, status)"],
  },
  "herald_public.webhook_endpoints": {
    member: ["DELETE", "INSERT(description, event_types, key_version, secret_encrypted, secret_hint, tenant_id, url)", "SELECT(consecutive_failures, created_at, description, disabled_at, disabled_reason, event_types, id, secret_hint, status, tenant_id, updated_at, url)", "UPDATE(description, event_types, status, url)"],
    admin: ["DELETE", "SELECT(consecutive_failures, created_at, description, disabled_at, disabled_reason, event_types, id, secret_hint, status, tenant_id, updated_at, url)"],
    worker: ["SELECT", "UPDATE(consecutive_failures, disabled_at, disabled_reason, key_version, secret_encrypted, status)"],
  },
};
