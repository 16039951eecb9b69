// The whole life of one access token, driven by oauth4webapi and checked again by jose,
// as a client and a resource server that know only the broker's issuer URL would do it:
//
//   1. discovery: RFC 8414 and OpenID Connect Discovery, both validated by oauth4webapi;
//   2. RFC 8693 token exchange at the token endpoint the metadata names;
//   3. RFC 9068 validation of the minted token (oauth4webapi, JWKS from `jwks_uri`);
//   4. an independent verification with jose (remote JWKS, typ, iss, aud, alg);
//   5. RFC 7662 introspection (as a resource server) and RFC 7009 revocation (as the
//      token's owner) at the endpoints the metadata names; introspection again: inactive.
//
// Inputs (environment): BROKER_ISSUER_URL, SUBJECT_TOKEN (workload JWT of the client),
// CLIENT_ID, RS_TOKEN (workload JWT of a resource server allowed to introspect),
// RS_CLIENT_ID, TASK, EXPECTED_AUDIENCE, EXPECTED_ALG; NODE_EXTRA_CA_CERTS for TLS.
import * as oauth from 'oauth4webapi';
import * as jose from 'jose';

import { bearerWorkloadJwt, discover, env, insecure, resourceRequest, run } from './common.mjs';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

await run(async (out) => {
  const audience = env('EXPECTED_AUDIENCE');
  const alg = env('EXPECTED_ALG');

  // 1. Discovery, both well-known documents; processDiscoveryResponse checks that the
  //    document's issuer is exactly the one asked for.
  out.step = 'discovery (RFC 8414)';
  const as = await discover('oauth2');
  out.step = 'discovery (OIDC)';
  const op = await discover('oidc');
  out.discovery = {
    oauth2: pick(as, [
      'issuer', 'token_endpoint', 'introspection_endpoint', 'revocation_endpoint', 'jwks_uri',
      'token_endpoint_auth_methods_supported', 'access_token_signing_alg_values_supported',
    ]),
    oidc: pick(op, ['issuer', 'token_endpoint', 'jwks_uri', 'id_token_signing_alg_values_supported']),
  };

  // 2. Token exchange. The client is public at the token endpoint (`none`): the
  //    subject_token is the whole credential.
  out.step = 'token exchange';
  const client = { client_id: env('CLIENT_ID') };
  const res = await oauth.genericTokenEndpointRequest(as, client, oauth.None(), TOKEN_EXCHANGE, {
    subject_token: env('SUBJECT_TOKEN'),
    subject_token_type: JWT_TOKEN_TYPE,
    task: env('TASK'),
  }, insecure);
  const token = await oauth.processGenericTokenEndpointResponse(as, client, res);
  out.token = pick(token, ['token_type', 'issued_token_type', 'expires_in', 'scope']);

  // 3. RFC 9068 validation at a resource server: signature by a key of `jwks_uri`,
  //    typ at+jwt, iss, exp, aud, and the presence of sub, iat, jti, client_id.
  out.step = 'RFC 9068 validation (oauth4webapi)';
  const claims = await oauth.validateJwtAccessToken(as, resourceRequest(token.access_token), audience, insecure);
  out.rfc9068 = pick(claims, ['iss', 'sub', 'aud', 'client_id', 'scope', 'jti']);

  // 4. jose, independently: the JWKS fetched from the metadata's jwks_uri, and exactly
  //    the algorithm the broker is expected to sign with.
  out.step = 'jose jwtVerify';
  const jwks = jose.createRemoteJWKSet(new URL(as.jwks_uri));
  const verified = await jose.jwtVerify(token.access_token, jwks, {
    issuer: as.issuer,
    audience,
    typ: 'at+jwt',
    algorithms: [alg],
    requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat', 'jti'],
  });
  out.jose = { alg: verified.protectedHeader.alg, typ: verified.protectedHeader.typ, jti: verified.payload.jti };

  // 5. Introspection as the resource server, revocation as the owner, introspection again.
  const rs = { client_id: env('RS_CLIENT_ID') };
  const rsAuth = bearerWorkloadJwt(env('RS_TOKEN'));
  out.step = 'introspection';
  out.introspection = await introspect(as, rs, rsAuth, token.access_token);

  out.step = 'revocation';
  await oauth.processRevocationResponse(
    await oauth.revocationRequest(as, client, bearerWorkloadJwt(env('SUBJECT_TOKEN')), token.access_token, insecure),
  );
  out.revoked = true;

  out.step = 'introspection after revocation';
  out.introspection_after_revocation = await introspect(as, rs, rsAuth, token.access_token);
});

async function introspect(as, client, auth, token) {
  const res = await oauth.introspectionRequest(as, client, auth, token, insecure);
  const body = await oauth.processIntrospectionResponse(as, client, res);
  return pick(body, ['active', 'sub', 'client_id', 'aud', 'scope', 'jti', 'token_type']);
}

function pick(obj, keys) {
  return Object.fromEntries(keys.filter((k) => obj[k] !== undefined).map((k) => [k, obj[k]]));
}
