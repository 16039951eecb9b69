// Peer for bench/peer.sh: node-oidc-provider (oidc-provider 9.x) set up like the broker's
// benchmark task, so both answer the same kind of request with the same kind of token:
//
// - one confidential client (client_secret_basic), grant type client_credentials only;
// - the resource indicators feature with a default resource, so a client_credentials
//   request without `resource` gets a JWT access token (accessTokenFormat 'jwt') for it;
// - access tokens signed EdDSA with an Ed25519 key generated at start (one key for all
//   workers: the primary makes it and hands it to the workers); ALG=ES256 signs with a
//   P-256 key instead (the broker's `serve --dev` default since issue 17);
// - production mode (NODE_ENV=production; set by bench/peer.sh, forced here too);
// - node:cluster with WORKERS (2) workers sharing 127.0.0.1:PORT;
// - no audit log and no token storage (JWT access tokens are not persisted by
//   oidc-provider; the peer has no audit trail to write).
//
// Environment: PORT (required), HOST (127.0.0.1), WORKERS (2), ALG (EdDSA or ES256), CLIENT_ID (bench),
// CLIENT_SECRET (bench-secret), RESOURCE (urn:broker-bench:api), SCOPE (api:read),
// TOKEN_TTL (300 seconds).
//
// The primary prints `listening on http://HOST:PORT (N workers)` once every worker
// listens, then `ready`.

import cluster from 'node:cluster';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';

process.env.NODE_ENV = 'production';

const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number.parseInt(process.env.PORT || '', 10);
const WORKERS = Number.parseInt(process.env.WORKERS || '2', 10);
const CLIENT_ID = process.env.CLIENT_ID || 'bench';
const CLIENT_SECRET = process.env.CLIENT_SECRET || 'bench-secret';
const RESOURCE = process.env.RESOURCE || 'urn:broker-bench:api';
const SCOPE = process.env.SCOPE || 'api:read';
const TOKEN_TTL = Number.parseInt(process.env.TOKEN_TTL || '300', 10);
const ALG = process.env.ALG || 'EdDSA';

if (!Number.isInteger(PORT) || PORT <= 0 || PORT > 65535) {
  console.error('server.mjs: set PORT to the port to listen on');
  process.exit(2);
}
if (ALG !== 'EdDSA' && ALG !== 'ES256') {
  console.error('server.mjs: ALG must be EdDSA or ES256');
  process.exit(2);
}

if (cluster.isPrimary) {
  const { privateKey } = ALG === 'EdDSA'
    ? generateKeyPairSync('ed25519')
    : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = {
    ...privateKey.export({ format: 'jwk' }),
    alg: ALG,
    use: 'sig',
    kid: randomBytes(8).toString('hex'),
  };
  const cookieKey = randomBytes(32).toString('hex');

  let listening = 0;
  let stopping = false;
  for (let i = 0; i < WORKERS; i += 1) {
    const worker = cluster.fork({ PEER_JWK: JSON.stringify(jwk), PEER_COOKIE_KEY: cookieKey });
    worker.on('listening', () => {
      listening += 1;
      if (listening === WORKERS) {
        console.log(`listening on http://${HOST}:${PORT} (${WORKERS} workers, ${ALG})`);
        console.log('ready');
      }
    });
  }
  cluster.on('exit', (worker, code, signal) => {
    if (!stopping) {
      console.error(`worker ${worker.process.pid} exited (${signal || code}); stopping`);
      process.exit(1);
    }
  });
  const stop = () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGTERM');
    setTimeout(() => process.exit(0), 200).unref();
    cluster.disconnect(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const { default: Provider } = await import('oidc-provider');
  const jwk = JSON.parse(process.env.PEER_JWK);

  const provider = new Provider(`http://${HOST}:${PORT}`, {
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        id_token_signed_response_alg: ALG,
        scope: SCOPE,
      },
    ],
    clientDefaults: {
      id_token_signed_response_alg: ALG,
    },
    jwks: { keys: [jwk] },
    cookies: { keys: [process.env.PEER_COOKIE_KEY] },
    scopes: [SCOPE],
    enabledJWA: {
      idTokenSigningAlgValues: [ALG],
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resourceIndicator) => {
          if (resourceIndicator !== RESOURCE) {
            throw new Provider.errors.InvalidTarget();
          }
          return {
            scope: SCOPE,
            audience: RESOURCE,
            accessTokenTTL: TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: ALG } },
          };
        },
      },
    },
    ttl: {
      ClientCredentials: TOKEN_TTL,
    },
  });

  const server = http.createServer(provider.callback());
  server.keepAliveTimeout = 60_000;
  server.headersTimeout = 65_000;
  server.listen(PORT, HOST);
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}
