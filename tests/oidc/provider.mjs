// A real OpenID Connect provider for the tests: the `oidc-provider` npm package (the
// certified implementation by panva), on loopback, with one confidential client and its
// development login form (any login name signs in; the name becomes the subject and the
// email is NAME, or NAME@example.com when it has no @; a name starting "unverified-" gets
// email_verified: false).
//
// Usage: node provider.mjs  with OIDC_PROVIDER_MODULE (path to oidc-provider's
// lib/index.js), PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI set. Prints "ready ISSUER".
import { pathToFileURL } from "node:url";

const { default: Provider } = await import(pathToFileURL(process.env.OIDC_PROVIDER_MODULE).href);
const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: process.env.CLIENT_ID,
      client_secret: process.env.CLIENT_SECRET,
      redirect_uris: [process.env.REDIRECT_URI],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"] },
  async findAccount(ctx, id) {
    const email = id.includes("@") ? id : `${id}@example.com`;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email, email_verified: !id.startsWith("unverified-"), name: id };
      },
    };
  },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ["tocsin-test-cookie-key"] },
});
provider.proxy = false;
provider.listen(port, "127.0.0.1", () => {
  console.log(`ready ${issuer}`);
});
