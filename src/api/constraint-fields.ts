/**
 * Which GraphQL input field a database constraint checks, so that an error
 * names the field the client sent (`subject`, `channel`, `tagId`) rather than
 * the constraint (`templates_email_subject`). Used by src/api/errors.ts for
 * check (23514), unique (23505), foreign-key (23503) and exclusion (23P01)
 * violations.
 *
 * Every constraint (and unique index) on a table in `herald_public`, the
 * schema GraphQL exposes, is in one of the two lists below:
 * test/errors.fields.test.ts reads them all from pg_catalog and fails, saying
 * what to add, when a new one is in neither.
 * Field names are the input's own (camelCase), whichever mutation sends them.
 */
export const CONSTRAINT_FIELDS: Readonly<Record<string, string>> = {
  api_keys_name_length: "name",

  contact_tags_pkey: "tagId",
  contact_tags_contact_fkey: "contactId",
  contact_tags_tag_fkey: "tagId",

  contacts_attributes_object: "attributes",
  contacts_external_id_length: "externalId",
  contacts_first_name_length: "firstName",
  contacts_last_name_length: "lastName",
  contacts_locale_format: "locale",
  contacts_timezone_length: "timezone",
  // Unique indexes: a phone, email or external id belongs to one contact of a tenant.
  contacts_email_hash: "email",
  contacts_external_id: "externalId",
  contacts_phone_hash: "phone",

  email_domains_domain_format: "domain",
  email_domains_domain_unique: "domain",

  email_senders_from_email: "fromEmail",
  email_senders_from_email_unique: "fromEmail",
  email_senders_from_name_length: "fromName",
  email_senders_reply_to: "replyTo",
  email_senders_account_fkey: "providerAccountId",

  list_members_pkey: "contactId",
  list_members_contact_fkey: "contactId",
  list_members_list_fkey: "listId",

  lists_pkey: "rowId",
  lists_description_length: "description",
  lists_name_length: "name",
  lists_name_unique: "name",

  invitations_email_format: "email",
  invitations_role_valid: "role",
  // acceptInvitation of an invitation already withdrawn.
  invitations_used_once: "token",

  // inviteMember for someone already a member; changeMemberRole to a role that does not exist.
  memberships_pkey: "email",
  memberships_role_valid: "role",

  messages_body_length: "body",
  messages_channel: "channel",
  messages_content: "body",
  messages_html_length: "htmlBody",
  messages_idempotency_key_length: "idempotencyKey",
  messages_idempotency_key_unique: "idempotencyKey",
  messages_media_count: "mediaUrls",
  messages_metadata_object: "metadata",
  messages_purpose: "purpose",
  messages_subject_length: "subject",
  messages_template_fkey: "templateId",

  provider_accounts_kind: "kind",
  // Meta accounts (createMetaAccount); createProviderAccount(kind: "meta") lacks their fields.
  provider_accounts_meta_fields: "kind",
  provider_accounts_meta_phone_number_id: "phoneNumberId",
  provider_accounts_meta_waba_id: "wabaId",
  // Unique index: one active account of each kind per tenant.
  provider_accounts_one_active: "kind",
  provider_accounts_name_length: "name",
  provider_accounts_twilio_fields: "twilioAccountSid",
  provider_accounts_twilio_key_sid: "twilioApiKeySid",
  provider_accounts_twilio_sid: "twilioAccountSid",

  sender_numbers_channel: "channel",
  sender_numbers_e164: "phoneNumber",
  sender_numbers_mps_range: "messagesPerSecond",
  sender_numbers_number_key: "phoneNumber",
  sender_numbers_account_fkey: "providerAccountId",
  // A tenant registers a number once per channel (across tenants, only verified numbers are unique).
  sender_numbers_tenant_number_key: "phoneNumber",
  number_requests_account_fkey: "providerAccountId",
  number_requests_sender_number_fkey: "senderNumberId",
  number_requests_idempotency_key: "idempotencyKey",
  number_requests_idempotency_key_length: "idempotencyKey",

  // Messaging Services (src/services/): addMessagingService / updateMessagingService arguments.
  messaging_services_name_length: "name",
  messaging_services_sid_format: "serviceSid",
  messaging_services_sid_unique: "serviceSid",
  messaging_services_mps_range: "messagesPerSecond",
  messaging_services_one_default: "isDefault",
  messaging_services_account_fkey: "providerAccountId",

  suppressions_address_unique: "address",
  suppressions_kind: "kind",
  suppressions_note_length: "note",
  suppressions_reason: "reason",

  segments_pkey: "rowId",
  segments_description_length: "description",
  // Its function raises 22023 naming the path inside the filter first; this is the backstop.
  segments_filter_valid: "filter",
  segments_name_length: "name",
  segments_name_unique: "name",

  tags_pkey: "rowId",
  tags_name_length: "name",
  tags_name_unique: "name",

  templates_pkey: "rowId",
  templates_body_length: "body",
  templates_channel: "channel",
  templates_email_subject: "subject",
  templates_email_content: "body",
  templates_html_length: "htmlBody",
  templates_html_only_email: "htmlBody",
  templates_name_length: "name",
  templates_name_unique: "name",
  templates_subject_length: "subject",
  templates_whatsapp_template: "whatsappTemplateName",
  templates_whatsapp_template_language: "whatsappTemplateLanguage",
  templates_whatsapp_template_name: "whatsappTemplateName",
  templates_whatsapp_template_parameters: "whatsappTemplateParameters",
  templates_media_count: "mediaUrls",
  templates_content_sid: "contentSid",
  templates_content_variables: "contentVariables",

  tenant_settings_api_requests_per_minute_range: "apiRequestsPerMinute",
  tenant_settings_business_name_length: "businessName",
  tenant_settings_cap_nonnegative: "monthlyMessageCap",
  tenant_settings_country_format: "defaultCountry",
  tenant_settings_help_disclaimer_length: "helpDisclaimer",
  tenant_settings_help_text_length: "helpText",
  tenant_settings_message_frequency_length: "messageFrequency",
  tenant_settings_program_description_length: "programDescription",
  tenant_settings_rate_batch_size_range: "rateBatchSize",
  tenant_settings_rate_interval_range: "rateBatchIntervalSeconds",
  tenant_settings_start_reply_length: "startReply",
  tenant_settings_stop_reply_length: "stopReply",
  tenant_settings_support_email_length: "supportEmail",
  tenant_settings_support_phone_length: "supportPhone",
  tenant_settings_support_website_length: "supportWebsite",

  tenants_name_length: "name",
  tenants_status_valid: "status",
  tenants_suspended_at: "suspendedAt",
  tenants_suspension_reason_length: "suspensionReason",

  users_display_name_length: "displayName",
  users_email_format: "email",
  users_email_key: "email",

  webhook_endpoints_description_length: "description",
  webhook_endpoints_disabled_reason_length: "disabledReason",
  webhook_endpoints_event_types: "eventTypes",
  webhook_endpoints_status: "status",
  webhook_endpoints_url: "url",
};

const GENERATED_ID = "the id is generated by the database; no input sets it";
const SESSION_TENANT = "the tenant comes from the session, and row-level security refuses another one first";
const SERVER_WRITTEN = "the rows are written by Herald itself (worker, webhooks, triggers), never from a GraphQL input";
const SERVER_SET = "the column is set by Herald from the session or its own state, never from a GraphQL input";
const NO_GRAPHQL_INPUT = "no GraphQL mutation writes this column (the CLI and audited functions do)";

/** Constraints no GraphQL input can violate, each with the reason. */
export const NOT_FROM_INPUT: Readonly<Record<string, string>> = {
  invitations_pkey: GENERATED_ID,
  invitations_tenant_id_fkey: SESSION_TENANT,
  invitations_invited_by_fkey: SERVER_SET,
  invitations_accepted_by_fkey: SERVER_SET,
  invitations_token_hash_key: "the token is generated by Herald; only its hash is kept",
  invitations_token_not_kept: "a trigger checks the presented token and clears it before the row is written",

  api_keys_pkey: GENERATED_ID,
  api_keys_secret_hash_key: "the secret is generated by Herald",
  api_keys_created_by_fkey: SERVER_SET,
  api_keys_tenant_id_fkey: SESSION_TENANT,

  audit_log_pkey: SERVER_WRITTEN,
  audit_log_action: SERVER_WRITTEN,
  audit_log_actor_detail_length: SERVER_WRITTEN,
  audit_log_actor_kind: SERVER_WRITTEN,
  audit_log_tenant_id_fkey: SERVER_WRITTEN,

  consent_events_pkey: SERVER_WRITTEN,
  consent_events_action: SERVER_WRITTEN,
  consent_events_channel: SERVER_WRITTEN,
  consent_events_detail_length: SERVER_WRITTEN,
  consent_events_source: SERVER_WRITTEN,
  consent_events_contact_fkey: SERVER_WRITTEN,
  consent_events_inbound_message_fkey: SERVER_WRITTEN,
  consent_events_tenant_id_fkey: SERVER_WRITTEN,

  contact_tags_tenant_id_fkey: SESSION_TENANT,

  segments_tenant_id_fkey: SESSION_TENANT,

  contacts_pkey: GENERATED_ID,
  contacts_email_pair: "Herald encrypts and hashes an address together",
  contacts_phone_pair: "Herald encrypts and hashes a number together",
  contacts_key_version_fkey: SERVER_SET,
  contacts_tenant_id_fkey: SESSION_TENANT,

  deliveries_pkey: SERVER_WRITTEN,
  deliveries_channel: SERVER_WRITTEN,
  deliveries_claimed_by_length: SERVER_WRITTEN,
  deliveries_content_sha256_format: SERVER_WRITTEN,
  deliveries_error_code_length: SERVER_WRITTEN,
  deliveries_hold_reason: SERVER_WRITTEN,
  deliveries_hold_reason_queued: SERVER_WRITTEN,
  deliveries_message_contact_unique: SERVER_WRITTEN,
  deliveries_provider: SERVER_WRITTEN,
  deliveries_provider_message_id_length: SERVER_WRITTEN,
  deliveries_reason_length: SERVER_WRITTEN,
  deliveries_status: SERVER_WRITTEN,
  deliveries_contact_fkey: SERVER_WRITTEN,
  deliveries_content_key_version_fkey: SERVER_WRITTEN,
  deliveries_message_fkey: SERVER_WRITTEN,
  deliveries_provider_account_fkey: SERVER_WRITTEN,

  delivery_events_pkey: SERVER_WRITTEN,
  delivery_events_dedupe_key_length: SERVER_WRITTEN,
  delivery_events_dedupe_unique: SERVER_WRITTEN,
  delivery_events_error_code_length: SERVER_WRITTEN,
  delivery_events_event_length: SERVER_WRITTEN,
  delivery_events_provider: SERVER_WRITTEN,
  delivery_events_delivery_fkey: SERVER_WRITTEN,
  delivery_events_url_length: SERVER_WRITTEN,
  delivery_engagement_pkey: SERVER_WRITTEN,
  delivery_engagement_delivery_fkey: SERVER_WRITTEN,
  delivery_engagement_opens: SERVER_WRITTEN,
  delivery_engagement_clicks: SERVER_WRITTEN,
  delivery_engagement_clicked_urls: SERVER_WRITTEN,

  email_domains_pkey: GENERATED_ID,
  email_domains_last_error_length: SERVER_WRITTEN,
  email_domains_status: SERVER_WRITTEN,
  email_domains_account_fkey: SERVER_SET,
  email_domains_tenant_id_fkey: SESSION_TENANT,

  email_senders_pkey: GENERATED_ID,
  email_senders_tenant_id_fkey: SESSION_TENANT,

  inbound_messages_pkey: SERVER_WRITTEN,
  inbound_messages_account: SERVER_WRITTEN,
  inbound_messages_auto_reply_length: SERVER_WRITTEN,
  inbound_messages_channel: SERVER_WRITTEN,
  inbound_messages_keyword: SERVER_WRITTEN,
  inbound_messages_media_count: SERVER_WRITTEN,
  inbound_messages_media_shape: SERVER_WRITTEN,
  inbound_messages_provider_message_id_length: SERVER_WRITTEN,
  inbound_messages_provider_message_unique: SERVER_WRITTEN,
  inbound_messages_to_e164: SERVER_WRITTEN,
  inbound_messages_contact_fkey: SERVER_WRITTEN,
  inbound_messages_key_version_fkey: SERVER_WRITTEN,
  inbound_messages_provider_account_fkey: SERVER_WRITTEN,
  inbound_messages_sender_number_fkey: SERVER_WRITTEN,
  inbound_messages_tenant_id_fkey: SERVER_WRITTEN,

  list_members_tenant_id_fkey: SESSION_TENANT,
  lists_tenant_id_fkey: SESSION_TENANT,

  memberships_tenant_id_fkey: NO_GRAPHQL_INPUT,
  memberships_user_id_fkey: NO_GRAPHQL_INPUT,

  messages_pkey: GENERATED_ID,
  messages_status: SERVER_WRITTEN,
  messages_created_by_fkey: SERVER_SET,
  messages_tenant_id_fkey: SESSION_TENANT,

  provider_accounts_pkey: GENERATED_ID,
  provider_accounts_last_error_length: SERVER_WRITTEN,
  provider_accounts_content_templates: SERVER_WRITTEN,
  provider_accounts_status: SERVER_WRITTEN,
  provider_accounts_key_version_fkey: SERVER_SET,
  provider_accounts_meta_key_version_fkey: SERVER_SET,
  provider_accounts_tenant_id_fkey: SESSION_TENANT,

  sender_numbers_pkey: GENERATED_ID,
  sender_numbers_service_fkey: SERVER_WRITTEN,

  messaging_services_pkey: GENERATED_ID,
  messaging_services_status: SERVER_WRITTEN,
  messaging_services_last_error_length: SERVER_WRITTEN,
  messaging_services_tenant_id_fkey: SESSION_TENANT,
  sender_numbers_tenant_id_fkey: SESSION_TENANT,
  sender_numbers_status: SERVER_WRITTEN,
  sender_numbers_verified_at: SERVER_WRITTEN,
  sender_numbers_failure_reason_length: SERVER_WRITTEN,
  sender_numbers_provider_fields_length: SERVER_WRITTEN,

  number_requests_pkey: GENERATED_ID,
  number_requests_tenant_id_fkey: SESSION_TENANT,
  number_requests_kind: "each mutation sets its own request kind",
  number_requests_status: SERVER_WRITTEN,
  number_requests_error_length: SERVER_WRITTEN,

  suppressions_pkey: GENERATED_ID,
  suppressions_key_version_fkey: SERVER_SET,
  suppressions_tenant_id_fkey: SESSION_TENANT,

  tags_tenant_id_fkey: SESSION_TENANT,
  templates_tenant_id_fkey: SESSION_TENANT,

  tenant_settings_pkey: SESSION_TENANT,
  tenant_settings_tenant_id_fkey: SESSION_TENANT,

  tenants_pkey: NO_GRAPHQL_INPUT,
  tenants_slug_format: NO_GRAPHQL_INPUT,
  tenants_slug_key: NO_GRAPHQL_INPUT,

  users_pkey: NO_GRAPHQL_INPUT,

  webhook_deliveries_pkey: SERVER_WRITTEN,
  webhook_deliveries_event_type: SERVER_WRITTEN,
  webhook_deliveries_hold_reason: SERVER_WRITTEN,
  webhook_deliveries_hold_reason_pending: SERVER_WRITTEN,
  webhook_deliveries_last_error_length: SERVER_WRITTEN,
  webhook_deliveries_status: SERVER_WRITTEN,
  webhook_deliveries_endpoint_fkey: SERVER_WRITTEN,
  webhook_deliveries_replay_of_fkey: SERVER_WRITTEN,

  webhook_endpoints_pkey: GENERATED_ID,
  webhook_endpoints_key_version_fkey: SERVER_SET,
  webhook_endpoints_tenant_id_fkey: SESSION_TENANT,
};

/** The input field a constraint checks, or undefined when no input can violate it (or it is new and unmapped). */
export const fieldOfConstraint = (constraint: string | undefined): string | undefined =>
  constraint ? CONSTRAINT_FIELDS[constraint] : undefined;
