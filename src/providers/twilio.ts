import twilio from "twilio";
import RequestClient from "twilio/lib/base/RequestClient.js";

/**
 * The real Twilio SDK, optionally pointed at Herald's sandbox: every request
 * the SDK would send to https://*.twilio.com goes to `<sandboxUrl>/twilio`
 * instead, with the same path, form body and Basic auth.
 */

class SandboxRequestClient extends RequestClient {
  readonly #base: string;
  constructor(base: string) {
    super();
    this.#base = base.replace(/\/$/, "");
  }
  override request<T>(opts: RequestClient.RequestOptions<T>) {
    const url = new URL(opts.uri);
    return super.request({ ...opts, uri: `${this.#base}/twilio${url.pathname}${url.search}` });
  }
}

export type TwilioClient = ReturnType<typeof twilio>;

/** With `apiKeySid`, the SDK authenticates as that API key (authToken is its secret) and addresses the account. */
export function createTwilioClient(
  credentials: { accountSid: string; authToken: string; apiKeySid?: string },
  sandboxUrl?: string,
): TwilioClient {
  const options = {
    accountSid: credentials.accountSid,
    ...(sandboxUrl ? { httpClient: new SandboxRequestClient(sandboxUrl) } : {}),
  };
  return twilio(credentials.apiKeySid ?? credentials.accountSid, credentials.authToken, options);
}
