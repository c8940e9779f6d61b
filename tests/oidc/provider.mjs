// A real OpenID provider (panva/oidc-provider) for Lintel's end-to-end SSO tests.
//
//   node provider.mjs <config.json>
//
// config.json:
//   { "port": 41234,
//     "clients": [{ "client_id": "lintel", "client_secret": "s3cret",
//                   "redirect_uris": ["http://127.0.0.1:8080/auth/oidc/callback"] }],
//     "accounts": { "alice": { "email": "alice@acme.example", "groups": ["building-admins"], ... } },
//     "exit_on_stdin_eof": false }
//
// Client entries are oidc-provider client metadata and are passed through as they are.
// Every field of an account becomes a claim, and the account's key is its `sub`.
//
// There are no login or consent pages. A browser (the test driver) that lands on
// /interaction/<uid> finishes the pending prompt by adding `?account=<key>`; without it, or with
// an unknown key, the user refuses and the relying party gets `error=access_denied`.
//
// On listening it prints exactly one line, `READY <issuer>`, to stdout. Errors go to stderr.
// Two start-up warnings on stderr are expected: oidc-provider 9 prefers Node.js 22 but runs on
// 20, and its in-memory storage (all this needs: nothing outlives a test) is not for production.
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider from 'oidc-provider';

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node provider.mjs <config.json>');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const accounts = config.accounts ?? {};
const issuer = `http://127.0.0.1:${config.port}`;

// A fresh signing key per run, so the provider never falls back to its built-in development
// keys (which it warns about). RS256 is what relying parties, openidconnect-rs included, expect
// by default.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-idp', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: (config.clients ?? []).map((client) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    // oidc-provider 9 accepts the secret in the Authorization header and in the form body
    // for a client registered with either of the two methods, so this allows both.
    token_endpoint_auth_method: 'client_secret_basic',
    ...client,
  })),

  async findAccount(ctx, id) {
    const account = Object.hasOwn(accounts, id) ? accounts[id] : undefined;
    if (!account) return undefined;
    // Return everything; the provider itself releases only what the granted scopes allow.
    return { accountId: id, async claims() { return { sub: id, ...account }; } };
  },

  // Which claims each scope releases. `groups`, `tid` (Entra ID's tenant) and `hd` (Google's
  // hosted domain) come with `openid` itself, as those IdPs put them in every ID token; a
  // `groups` scope exists too for relying parties that ask for it explicitly.
  claims: {
    openid: ['sub', 'groups', 'tid', 'hd'],
    email: ['email', 'email_verified'],
    profile: ['name', 'family_name', 'given_name', 'middle_name', 'nickname', 'preferred_username',
      'picture', 'profile', 'website', 'gender', 'birthdate', 'zoneinfo', 'locale', 'updated_at'],
    groups: ['groups'],
  },
  // By default, when an access token for userinfo is issued too, oidc-provider puts only the
  // `openid` scope's claims in the ID token, and `email`, `name` and the like in userinfo only.
  // Relying parties such as Lintel read the claims from the ID token, as with most real IdPs.
  conformIdTokenClaims: false,

  // Always require PKCE (S256 is the only method oidc-provider 9 supports). Its default demands
  // PKCE from public clients only; Lintel must send it anyway, and this catches it if not.
  pkce: { required: () => true },

  // Authorization code flow only; no implicit or hybrid flows.
  responseTypes: ['code'],

  features: {
    // The built-in HTML login/consent pages are for development only; see handleInteraction.
    devInteractions: { enabled: false },
  },

  // The test browser shares one cookie jar between Lintel and this provider, and cookies do not
  // tell ports apart, so use names that cannot collide with Lintel's own cookies.
  cookies: {
    names: { session: 'test_idp_session', interaction: 'test_idp_interaction', resume: 'test_idp_resume' },
    keys: ['lintel-test-idp-cookie-key-not-secret'],
  },

  jwks: { keys: [signingKey] },
});

// Errors the provider hands to relying parties are logged too: they explain a failing test.
for (const event of ['authorization.error', 'grant.error', 'userinfo.error', 'end_session.error',
  'discovery.error', 'jwks.error', 'introspection.error', 'revocation.error']) {
  provider.on(event, (ctx, err) => {
    console.error(`${event}: ${err.error ?? err.name}: ${err.error_description ?? err.message}`
      + `${err.error_detail ? ` (${err.error_detail})` : ''}`);
  });
}
provider.on('server_error', (ctx, err) => console.error('server_error:', err));

// GET /interaction/<uid>?account=<key>: finish the pending prompt as that user, no HTML.
async function handleInteraction(req, res, url) {
  const interaction = await provider.interactionDetails(req, res);
  const key = url.searchParams.get('account');
  if (!key || !Object.hasOwn(accounts, key)) {
    await provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: 'test user refused' },
      { mergeWithLastSubmission: false },
    );
    return;
  }

  const { prompt, params } = interaction;
  if (prompt.name === 'login') {
    await provider.interactionFinished(req, res, { login: { accountId: key } }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'consent') {
    // Grant exactly what the client asked for and is still missing.
    const { details } = prompt;
    const grant = interaction.grantId
      ? await provider.Grant.find(interaction.grantId)
      : new provider.Grant({ accountId: interaction.session.accountId, clientId: params.client_id });
    if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
    if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } });
    return;
  }
  throw new Error(`unexpected prompt ${prompt.name}`);
}

const handleProvider = provider.callback();
const server = http.createServer((req, res) => {
  const url = new URL(req.url, issuer);
  if (req.method === 'GET' && /^\/interaction\/[^/]+$/.test(url.pathname)) {
    handleInteraction(req, res, url).catch((err) => {
      console.error('interaction failed:', err);
      if (!res.headersSent) res.writeHead(err.statusCode ?? 500, { 'content-type': 'text/plain' });
      res.end(`interaction failed: ${err.message}\n`);
    });
    return;
  }
  handleProvider(req, res);
});

function shutdown() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
// With `exit_on_stdin_eof`, a parent that dies without stopping us (a test process killed mid-run)
// still takes the provider down: its end of our stdin pipe closes.
if (config.exit_on_stdin_eof) {
  process.stdin.on('end', shutdown);
  process.stdin.resume();
}

server.on('error', (err) => {
  console.error('cannot listen:', err.message);
  process.exit(1);
});
server.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`READY ${issuer}\n`);
});
