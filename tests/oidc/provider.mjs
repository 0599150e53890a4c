// A real OpenID Provider for the gateway's tests: panva's oidc-provider (OpenID Certified).
//
//   node provider.mjs PORT KEYS_FILE
//
// Issuer http://127.0.0.1:PORT. KEYS_FILE is a JSON Web Key Set of private signing keys
// ({"keys": [...]}, each with a kid); the first key signs, all are published at the jwks_uri,
// so a test rotates by restarting with the new key first and the old one second, then the new
// one alone. Confidential clients (client_secret_basic) get JWT access tokens with the
// client_credentials grant for one resource indicator (RFC 8707):
//
//   urn:pacs       -> aud "pacs"       urn:other-api  -> aud "other-api"
//
// with the gateway's claims `org` and `roles` taken from the client. OIDC_ACCESS_TOKEN_TTL
// (seconds, default 600) is how long access tokens live. Every HTTP request is printed on
// standard output as one JSON line {"method", "path", "status"}, after "listening".
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2] ?? process.env.OIDC_PORT);
const keysFile = process.argv[3] ?? process.env.OIDC_KEYS;
if (!Number.isInteger(port) || port <= 0 || !keysFile) {
  console.error('usage: node provider.mjs PORT KEYS_FILE');
  process.exit(2);
}
const ttl = Number(process.env.OIDC_ACCESS_TOKEN_TTL ?? 600);

//: resource indicator -> audience of the access tokens issued for it
const RESOURCES = { 'urn:pacs': 'pacs', 'urn:other-api': 'other-api' };
//: client -> the claims the gateway reads from its tokens
const CLIENTS = {
  'clin-a': { org: 'hosp-a', roles: ['clinician'] },
  admin: { roles: ['admin'] },
};

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: Object.keys(CLIENTS).map((id) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  jwks: JSON.parse(readFileSync(keysFile, 'utf8')),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, indicator) {
        const audience = RESOURCES[indicator];
        if (audience === undefined) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
        return { audience, scope: '', accessTokenFormat: 'jwt', accessTokenTTL: ttl };
      },
    },
  },
  extraTokenClaims(ctx, token) {
    return CLIENTS[token.clientId];
  },
  cookies: { keys: ['only-a-test-provider'] },
});

provider.use(async (ctx, next) => {
  await next();
  console.log(JSON.stringify({ method: ctx.method, path: ctx.path, status: ctx.status }));
});

const server = provider.listen(port, '127.0.0.1', () => console.log('listening'));
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
