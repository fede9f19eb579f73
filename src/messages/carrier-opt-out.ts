import type pg from "pg";

/** Twilio's error for a recipient who replied STOP to the number at the carrier. */
export const CARRIER_OPT_OUT = "21610";

/**
 * What a carrier opt-out means, whether the send's answer or a status
 * callback reports it: that phone is never sent to again from any of the
 * tenant's numbers (a suppression, and the contact unsubscribed).
 */
export async function recordCarrierOptOut(client: pg.ClientBase, phone: string, channel: string): Promise<void> {
  await client.query("select herald_hidden.record_opt_out('phone', $1, $2, 'carrier', $3)", [
    phone,
    channel,
    CARRIER_OPT_OUT,
  ]);
}
