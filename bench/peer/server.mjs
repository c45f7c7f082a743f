// Reference peer for bench/run.sh: node-oidc-provider configured to match the
// Portcullis gateway endpoints as closely as it allows.
//
//   PEER_PORT=9000 PEER_GW_SECRET=... PEER_SVC_SECRET=... [PEER_JWT_INTROSPECTION=0] node server.mjs
//
// - in-memory adapter (the library's default MemoryAdapter);
// - opaque access tokens (client_credentials without a resource indicator);
// - introspection, JWT introspection (RFC 9701), revocation, client_credentials;
// - clients `gw` (may introspect any token; JWT introspection responses signed
//   ES256) and `svc` (client_credentials, scopes "api read write"), both
//   client_secret_basic;
// - one ES256 and one RS256 signing key, generated at start, like Portcullis.
//
// Listens on 127.0.0.1 only and prints "peer listening <issuer>" when ready.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number.parseInt(process.env.PEER_PORT ?? '', 10);
const gwSecret = process.env.PEER_GW_SECRET;
const svcSecret = process.env.PEER_SVC_SECRET;
if (!Number.isInteger(port) || port <= 0 || !gwSecret || !svcSecret) {
  console.error('usage: PEER_PORT=N PEER_GW_SECRET=S PEER_SVC_SECRET=S node server.mjs');
  process.exit(2);
}

function signingKey(type, options, alg) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid: `${alg.toLowerCase()}-bench` };
}

const issuer = `http://127.0.0.1:${port}`;
// PEER_JWT_INTROSPECTION=0 turns RFC 9701 responses off (bench/run.sh then reports n/a).
const jwtIntrospection = process.env.PEER_JWT_INTROSPECTION !== '0';

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'gw',
      client_secret: gwSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'api',
      ...(jwtIntrospection ? { introspection_signed_response_alg: 'ES256' } : {}),
    },
    {
      client_id: 'svc',
      client_secret: svcSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'api read write',
    },
  ],
  scopes: ['openid', 'api', 'read', 'write'],
  jwks: {
    keys: [
      signingKey('ec', { namedCurve: 'P-256' }, 'ES256'),
      signingKey('rsa', { modulusLength: 2048 }, 'RS256'),
    ],
  },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Mirrors Portcullis' --may-introspect: only gw (or the token's own client).
      allowedPolicy: async (ctx, client, token) => client.clientId === 'gw' || client.clientId === token.clientId,
    },
    jwtIntrospection: { enabled: jwtIntrospection },
    revocation: {
      enabled: true,
      // A client revokes its own tokens; anything else is a silent no-op.
      allowedPolicy: async (ctx, client, token) => client.clientId === token.clientId,
    },
  },
  ttl: {
    AccessToken: 600,
    ClientCredentials: 600,
    IdToken: 3600,
    Grant: 600,
    Interaction: 600,
    Session: 3600,
    RefreshToken: 86400,
  },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
});

// Request logging would dominate the measurement; only report server errors.
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`peer listening ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
