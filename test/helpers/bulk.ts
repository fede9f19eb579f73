import type { TestDb } from "./db.ts";

/**
 * Many rows for one tenant, written as superuser in a few set-based
 * statements: `contacts` contacts without phone or email (no PII to encrypt),
 * all on one list and all tagged with one tag, each with `attributeBytes` of
 * attributes. For the cost-limit tests, which need a tenant large enough for
 * nested lists to multiply.
 */
export async function seedManyContacts(
  db: TestDb,
  tenantId: string,
  options: { contacts: number; attributeBytes?: number },
): Promise<{ listId: string; tagId: string }> {
  const client = await db.root.connect();
  try {
    await client.query("begin");
    await client.query(
      `insert into herald_public.contacts (tenant_id, first_name, last_name, key_version, hash_version, attributes)
       select $1, 'Bulk ' || g, 'Contact', (select max(version) from herald_private.tenant_data_keys where tenant_id = $1), 1,
              jsonb_build_object('note', repeat('x', $3))
         from generate_series(1, $2) g`,
      [tenantId, options.contacts, options.attributeBytes ?? 10],
    );
    const list = await client.query<{ id: string }>(
      "insert into herald_public.lists (tenant_id, name) values ($1, 'bulk') returning id",
      [tenantId],
    );
    const tag = await client.query<{ id: string }>(
      "insert into herald_public.tags (tenant_id, name) values ($1, 'bulk') returning id",
      [tenantId],
    );
    const listId = list.rows[0]!.id;
    const tagId = tag.rows[0]!.id;
    await client.query(
      "insert into herald_public.list_members (tenant_id, list_id, contact_id) select $1, $2, id from herald_public.contacts where tenant_id = $1",
      [tenantId, listId],
    );
    await client.query(
      "insert into herald_public.contact_tags (tenant_id, tag_id, contact_id) select $1, $2, id from herald_public.contacts where tenant_id = $1",
      [tenantId, tagId],
    );
    await client.query("commit");
    return { listId, tagId };
  } catch (error) {
    await client.query("rollback");
    throw error;
  } finally {
    client.release();
  }
}
