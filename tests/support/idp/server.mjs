// Reference OIDC provider for keyless tests: `oidc-provider` (OpenID Certified, not ours) on
// loopback, client-credentials grant only, RFC 8707 resource indicators, JWT (RS256) access
// tokens. Test fixture only: never for production.
//
// Usage: node server.mjs CONFIG.json
//
// CONFIG.json:
//   {
//     "clients": [
//       {"client_id": "trainer", "client_secret": "...",
//        "token_endpoint_auth_method": "client_secret_basic",   // | client_secret_post | private_key_jwt
//        "jwks": {"keys": [PUBLIC_JWK]},                       // private_key_jwt only
//        "extra_claims": {"job": "train"},                     // optional, merged into the JWT
//        "ttl_seconds": 300}                                   // optional access-token lifetime
//     ],
//     "audience_aliases": {"https://sts.amazonaws.com": "sts.amazonaws.com"},   // optional
//     "default_resource": "https://example.test/api"                           // optional
//   }
//
// Behaviour:
// - Listens on 127.0.0.1 on a port the OS picks; the issuer is then `http://127.0.0.1:<port>`.
// - One RS256 signing key, generated at startup (never written anywhere).
// - `resource=<absolute URI>` at the token endpoint becomes the JWT's `aud`. RFC 8707 needs an
//   absolute URI, so `sts.amazonaws.com` must be requested as `https://sts.amazonaws.com`.
//   Audience aliases (our choice, documented here): when the requested resource is a key of
//   `audience_aliases`, the Resource Server's `audience` is set to the mapped value, so the token's
//   `aud` is exactly that value (e.g. `sts.amazonaws.com`, what AWS trust policies expect). This
//   uses oidc-provider's own ResourceServer `audience` option rather than `extraTokenClaims`,
//   because extra claims are spread *before* the registered claims and cannot override `aud`.
// - Without `resource`, `default_resource` (if configured) is used; with neither, oidc-provider
//   issues an opaque token (JWT access tokens must have an audience).
// - `sub` is the client id; `extra_claims` of the client are added with `extraTokenClaims`.
// - Test-only endpoint `GET /__stats` -> {"token_requests": N, "auth_methods": {...}}: every
//   HTTP request that reaches the token endpoint is counted (successful or not); auth_methods
//   maps client id -> {method actually used -> successful grants}.
// - Note: oidc-provider 9 accepts client_secret_basic and client_secret_post interchangeably
//   for a client registered with either; private_key_jwt is enforced.
// - Once listening and configured it prints exactly one line `KEYLESS-IDP-READY <issuer>` on
//   stdout (Node 20 makes oidc-provider print an "unsupported runtime" warning first).

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import process from 'node:process';

import Provider from 'oidc-provider';

const READY = 'KEYLESS-IDP-READY';
const DEFAULT_TTL = 300;

function loadConfig(path) {
  if (!path) {
    console.error('keyless reference idp: usage: node server.mjs CONFIG.json');
    process.exit(2);
  }
  const config = JSON.parse(readFileSync(path, 'utf8'));
  if (!Array.isArray(config.clients)) {
    console.error('keyless reference idp: config must have a "clients" list');
    process.exit(2);
  }
  return config;
}

function clientMetadata(c) {
  const method = c.token_endpoint_auth_method || 'client_secret_basic';
  const meta = {
    client_id: c.client_id,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: method,
  };
  if (method === 'private_key_jwt') {
    meta.jwks = c.jwks;
    meta.token_endpoint_auth_signing_alg = 'RS256';
  } else {
    meta.client_secret = c.client_secret;
  }
  if (c.scope) meta.scope = c.scope;
  return meta;
}

function signingJwk() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };
}

const config = loadConfig(process.argv[2]);
const byId = new Map(config.clients.map((c) => [c.client_id, c]));
const aliases = config.audience_aliases || {};
const allScopes = [...new Set(config.clients.flatMap((c) => (c.scope ? c.scope.split(' ') : [])))];

let tokenRequests = 0;
// client id -> {auth method the client actually used -> successful grants}. oidc-provider
// accepts client_secret_basic and client_secret_post interchangeably for a secret client, so
// tests that must prove *how* a client authenticated read this instead.
const authMethods = {};
let provider; // built once the port is known
let handler;
let tokenPath = '/token';

const server = createServer((req, res) => {
  const path = (req.url || '/').split('?')[0];
  if (path === '/__stats' && req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token_requests: tokenRequests, auth_methods: authMethods }));
    return;
  }
  if (path === tokenPath) tokenRequests += 1;
  handler(req, res);
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  provider = new Provider(issuer, {
    clients: config.clients.map(clientMetadata),
    jwks: { keys: [signingJwk()] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    scopes: ['openid', ...allScopes],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf || config.default_resource,
        useGrantedResource: async () => false,
        getResourceServerInfo: async (_ctx, resourceIndicator) => ({
          scope: allScopes.join(' '),
          audience: aliases[resourceIndicator] || resourceIndicator,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    extraTokenClaims: async (_ctx, token) => {
      const client = byId.get(token.clientId);
      return client && client.extra_claims ? { ...client.extra_claims } : undefined;
    },
    ttl: {
      ClientCredentials: (_ctx, _token, client) => {
        const c = client && byId.get(client.clientId);
        return (c && c.ttl_seconds) || DEFAULT_TTL;
      },
    },
  });
  provider.on('grant.success', (ctx) => {
    const { params, client } = ctx.oidc;
    let method = 'none';
    if (params.client_assertion) method = client.clientAuthMethod;
    else if (params.client_secret) method = 'client_secret_post';
    else if (ctx.headers.authorization) method = 'client_secret_basic';
    const perClient = (authMethods[client.clientId] ||= {});
    perClient[method] = (perClient[method] || 0) + 1;
  });
  tokenPath = new URL(provider.urlFor('token')).pathname;
  handler = provider.callback();

  process.stdout.write(`${READY} ${issuer}\n`);
});

function shutdown() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
