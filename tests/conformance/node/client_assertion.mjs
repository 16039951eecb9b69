// RFC 7523 §2.2 client authentication (`private_key_jwt`) with oauth4webapi's own
// PrivateKeyJwt, the way Azure and GCP workload-identity federation take a workload JWT:
// the assertion is signed by the trusted workload issuer's key, `iss` is that issuer,
// `sub` the workload's subject, `aud` the broker's issuer (oauth4webapi's default), with a
// fresh `jti` and a 60 s lifetime on every request.
//
//   1. discovery; when `private_key_jwt` is not in token_endpoint_auth_methods_supported
//      the script reports {"client_assertion": "not advertised"} and stops (exit 0);
//   2. client_credentials with an assertion, then RFC 8693 token exchange alongside one;
//      both tokens validated per RFC 9068;
//   3. introspection as the resource server, revocation as the owner, each with an
//      assertion; introspection again: inactive.
//
// Inputs (environment): BROKER_ISSUER_URL, ASSERTION_KEY_FILE (PKCS#8 PEM of the trusted
// issuer's EC key), ASSERTION_ISSUER, ASSERTION_KID, CLIENT_ID and CLIENT_SUBJECT (the
// workload), RS_CLIENT_ID and RS_SUBJECT (a resource server allowed to introspect),
// SUBJECT_TOKEN, TASK, EXPECTED_AUDIENCE; NODE_EXTRA_CA_CERTS for TLS.
import { readFileSync } from 'node:fs';

import * as oauth from 'oauth4webapi';
import * as jose from 'jose';

import { discover, env, insecure, resourceRequest, run } from './common.mjs';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

await run(async (out) => {
  out.step = 'discovery (RFC 8414)';
  const as = await discover('oauth2');
  out.auth_methods = {
    token: as.token_endpoint_auth_methods_supported ?? [],
    introspection: as.introspection_endpoint_auth_methods_supported ?? [],
    revocation: as.revocation_endpoint_auth_methods_supported ?? [],
  };
  if (!out.auth_methods.token.includes('private_key_jwt')) {
    out.client_assertion = 'not advertised';
    return;
  }
  out.client_assertion = 'advertised';

  // The trusted issuer's key signs every assertion; only iss, sub and kid are changed
  // from what oauth4webapi builds (its iss/sub default to client_id).
  out.step = 'import the assertion key';
  const key = await jose.importPKCS8(readFileSync(env('ASSERTION_KEY_FILE'), 'utf8'), 'ES256');
  const assertion = (subject) => oauth.PrivateKeyJwt(key, {
    [oauth.modifyAssertion]: (header, payload) => {
      payload.iss = env('ASSERTION_ISSUER');
      payload.sub = subject;
      header.kid = env('ASSERTION_KID');
    },
  });
  const client = { client_id: env('CLIENT_ID') };
  const clientAuth = assertion(env('CLIENT_SUBJECT'));
  const audience = env('EXPECTED_AUDIENCE');

  out.step = 'client_credentials with a client assertion';
  const cc = await oauth.processClientCredentialsResponse(as, client,
    await oauth.clientCredentialsGrantRequest(as, client, clientAuth, { task: env('TASK') }, insecure));
  const ccClaims = await oauth.validateJwtAccessToken(as, resourceRequest(cc.access_token), audience, insecure);
  out.client_credentials = { sub: ccClaims.sub, client_id: ccClaims.client_id, scope: ccClaims.scope };

  out.step = 'token exchange with a client assertion';
  const te = await oauth.processGenericTokenEndpointResponse(as, client,
    await oauth.genericTokenEndpointRequest(as, client, clientAuth, TOKEN_EXCHANGE, {
      subject_token: env('SUBJECT_TOKEN'),
      subject_token_type: JWT_TOKEN_TYPE,
      task: env('TASK'),
    }, insecure));
  const teClaims = await oauth.validateJwtAccessToken(as, resourceRequest(te.access_token), audience, insecure);
  out.token_exchange = { sub: teClaims.sub, client_id: teClaims.client_id, scope: teClaims.scope };

  // The resource server authenticates with an assertion for its own subject.
  const rs = { client_id: env('RS_CLIENT_ID') };
  const rsAuth = assertion(env('RS_SUBJECT'));
  const introspect = async (token) => {
    const body = await oauth.processIntrospectionResponse(as, rs,
      await oauth.introspectionRequest(as, rs, rsAuth, token, insecure));
    return { active: body.active, sub: body.sub, client_id: body.client_id };
  };
  out.step = 'introspection with a client assertion';
  out.introspection = await introspect(cc.access_token);

  out.step = 'revocation with a client assertion';
  await oauth.processRevocationResponse(
    await oauth.revocationRequest(as, client, clientAuth, cc.access_token, insecure));
  out.revoked = true;

  out.step = 'introspection after revocation';
  out.introspection_after_revocation = await introspect(cc.access_token);
});
