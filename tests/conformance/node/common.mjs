// What the Node conformance scripts share: their inputs (environment variables set by
// tests/e2e/conformance.rs), discovery of the broker through RFC 8414, a client
// authentication function for the broker's `Authorization: Bearer <workload JWT>` form,
// and one way to report: a single JSON object on stdout, exit code 0 only when every step
// passed.
import * as oauth from 'oauth4webapi';

/** A required environment variable. */
export function env(name) {
  const v = process.env[name];
  if (v === undefined || v === '') throw new Error(`environment variable ${name} is not set`);
  return v;
}

/** The broker's issuer identifier (also its base URL). */
export const issuer = new URL(env('BROKER_ISSUER_URL'));

/**
 * oauth4webapi refuses plain-HTTP endpoints unless told otherwise; the tests' plain-HTTP
 * broker listens on loopback only, so only that run sets the option.
 */
export const insecure = issuer.protocol === 'http:' ? { [oauth.allowInsecureRequests]: true } : {};

/** RFC 8414 discovery (`/.well-known/oauth-authorization-server`), validated. */
export async function discover(algorithm = 'oauth2') {
  const res = await oauth.discoveryRequest(issuer, { algorithm, ...insecure });
  return oauth.processDiscoveryResponse(issuer, res);
}

/**
 * Client authentication the broker accepts today and no registered method names:
 * `Authorization: Bearer <workload JWT from a trusted issuer>`. oauth4webapi takes any
 * function of this shape as a ClientAuth.
 */
export function bearerWorkloadJwt(jwt) {
  return (_as, _client, _body, headers) => {
    headers.set('authorization', `Bearer ${jwt}`);
  };
}

/** A resource-server request carrying `accessToken`, for validateJwtAccessToken. */
export function resourceRequest(accessToken) {
  return new Request('https://resource.invalid/ledger', {
    headers: { authorization: `Bearer ${accessToken}` },
  });
}

/**
 * Runs `steps` (an async function filling `out`), then prints `out` as JSON. A thrown
 * error is reported as `failed_step` / `error` (with oauth4webapi's code and cause) and
 * exits 1.
 */
export async function run(steps) {
  const out = { step: 'start' };
  try {
    await steps(out);
    delete out.step;
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } catch (e) {
    out.failed_step = out.step;
    delete out.step;
    out.error = `${e?.name}: ${e?.message}`;
    if (e?.code) out.code = e.code;
    if (e?.error) out.oauth_error = e.error;
    if (e?.cause !== undefined) out.cause = safeJson(e.cause);
    process.stdout.write(`${JSON.stringify(out)}\n`);
    process.exitCode = 1;
  }
}

function safeJson(v) {
  try {
    return JSON.parse(JSON.stringify(v, (_k, x) => (x instanceof Headers ? Object.fromEntries(x) : x)));
  } catch {
    return String(v);
  }
}
