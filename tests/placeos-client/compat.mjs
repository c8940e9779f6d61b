// Compatibility test: drive a running `lintel serve` with the real `@placeos/ts-client`
// (4.7.7, pinned in package.json), the library PlaceOS front-ends are built on.
//
//   LINTEL_URL=http://127.0.0.1:8080 LINTEL_USER=admin@lintel.local LINTEL_PASSWORD=... node compat.mjs
//
// Optional: LINTEL_COMPAT_TIMEOUT_MS (overall limit, default 60000), LINTEL_COMPAT_TRACE=1
// (print every HTTP request the client makes; =2 also turns on the client's own debug log),
// LINTEL_COMPAT_RESTART=1: the script prints `RESTART LINTEL` and waits for a line on stdin
// once its supervisor has restarted the server (same address and data), to check that
// the client reconnects and rebinds; without it that check is reported as skipped.
//
// Prints one `ok - ...` line per passed check on stdout; on any mismatch or thrown call it
// prints `FAIL - <check>: <difference>` with the HTTP requests of that check on stderr and
// exits 1 once all checks ran (2 on the overall timeout, 64 on bad usage).
import { WebSocket as WsWebSocket } from 'ws';
import { isDeepStrictEqual, inspect } from 'node:util';

const env = process.env;
const BASE = (env.LINTEL_URL || '').replace(/\/+$/, '');
const USER = env.LINTEL_USER || '';
const PASSWORD = env.LINTEL_PASSWORD || '';
if (!BASE || !USER || !PASSWORD) {
    console.error(
        'usage: LINTEL_URL=http://127.0.0.1:8080 LINTEL_USER=<admin email> LINTEL_PASSWORD=<password> node compat.mjs',
    );
    process.exit(64);
}
const TRACE = Number(env.LINTEL_COMPAT_TRACE || 0);
const OVERALL_MS = Number(env.LINTEL_COMPAT_TIMEOUT_MS || 60000);
const CALL_MS = 15000; // one client call
const POLL_MS = 10000; // waiting for state to follow an exec

const hardStop = setTimeout(() => {
    console.error(`FAIL - overall timeout: the checks did not finish within ${OVERALL_MS} ms`);
    printTrace(trace.slice(checkStart));
    process.exit(2);
}, OVERALL_MS);

// ---------------------------------------------------------------------------------------
// Browser globals the client reads (at import time and later).
const origin = new URL(BASE);
class MemoryStorage {
    #m = new Map();
    get length() {
        return this.#m.size;
    }
    key(i) {
        return [...this.#m.keys()][i] ?? null;
    }
    getItem(k) {
        return this.#m.has(String(k)) ? this.#m.get(String(k)) : null;
    }
    setItem(k, v) {
        this.#m.set(String(k), String(v));
    }
    removeItem(k) {
        this.#m.delete(String(k));
    }
    clear() {
        this.#m.clear();
    }
}
const page = new URL('/compat/', origin); // the "page" the app is served from
const g = globalThis;
g.window = g;
g.self = g;
g.parent = g; // not in an iframe: window.location === window.parent.location
g.debug = TRACE >= 2; // the client's own console logging
g.localStorage = new MemoryStorage();
g.sessionStorage = new MemoryStorage();
g.location = {
    href: page.href,
    origin: page.origin,
    protocol: page.protocol,
    host: page.host,
    hostname: page.hostname,
    port: page.port,
    pathname: page.pathname,
    search: '',
    hash: '',
    assign: (url) => console.error(`note: the client tried to navigate to ${redactUrl(String(url))}`),
    replace: (url) => console.error(`note: the client tried to navigate to ${redactUrl(String(url))}`),
    reload: () => console.error('note: the client tried to reload the page'),
    toString: () => page.href,
};
g.history = { replaceState() {}, pushState() {} };
g.addEventListener = () => {};
g.removeEventListener = () => {};
g.document = {
    cookie: '',
    body: { appendChild() {}, removeChild() {} },
    createElement: () => ({ style: {} }),
};
if (!g.navigator) g.navigator = { userAgent: 'node', platform: 'node' };
// A browser's WebSocket: it sends the page's Origin and the cookie the client set for the
// WebSocket route (`bearer_token=…`, how @placeos/ts-client authenticates it by default).
const sockets = [];
class BrowserWebSocket extends WsWebSocket {
    constructor(url, protocols) {
        const headers = { Origin: page.origin };
        const cookie = String(g.document.cookie || '').split(';')[0].trim();
        if (cookie.includes('=')) headers.Cookie = cookie;
        super(url, protocols, { headers });
        sockets.push(redactUrl(String(url).replace(/^ws/, 'http')));
        if (TRACE) console.error(`  ws: ${sockets[sockets.length - 1]}${headers.Cookie ? ' [cookie]' : ''}`);
    }
}
g.WebSocket = BrowserWebSocket;

// Every request the client makes, for the report and for failure messages.
const trace = [];
let checkStart = 0;
const SECRET_PARAMS = [
    'password',
    'client_secret',
    'refresh_token',
    'access_token',
    'bearer_token',
    'code',
    'code_verifier',
    'token',
];
function redactUrl(u) {
    const url = new URL(u, origin);
    for (const p of SECRET_PARAMS) if (url.searchParams.has(p)) url.searchParams.set(p, '***');
    return `${url.pathname}${url.search}`;
}
const nativeFetch = g.fetch.bind(g);
g.fetch = async (input, init = {}) => {
    // The client builds relative URLs (`/auth/oauth/token?...`); node's fetch needs them absolute.
    const raw = typeof input === 'string' || input instanceof URL ? String(input) : input.url;
    const url = new URL(raw, page).href;
    const method = (init.method || 'GET').toUpperCase();
    const h = new Headers(init.headers || {});
    const auth = h.get('authorization')
        ? h.get('authorization').replace(/^(\w+) .*/, '$1 <token>')
        : h.get('x-api-key')
          ? 'X-API-Key: <key>'
          : '(no auth header)';
    const entry = {
        method,
        url: redactUrl(url),
        auth,
        content_type: h.get('content-type') || '',
        body: typeof init.body === 'string' && !url.includes('/auth/') ? init.body : init.body ? '<form>' : '',
    };
    trace.push(entry);
    try {
        const resp = await nativeFetch(url, init);
        entry.status = resp.status;
        entry.headers = {};
        for (const k of ['content-type', 'x-total-count', 'content-range', 'link'])
            if (resp.headers.has(k)) entry.headers[k] = resp.headers.get(k);
        if (TRACE) console.error(`  http: ${fmtEntry(entry)}`);
        return resp;
    } catch (e) {
        entry.status = `network error: ${e.cause?.message || e.message}`;
        if (TRACE) console.error(`  http: ${fmtEntry(entry)}`);
        throw e;
    }
};
function fmtEntry(e) {
    const hs = Object.entries(e.headers || {})
        .map(([k, v]) => `${k}: ${v}`)
        .join('; ');
    const ct = e.content_type ? `; Content-Type: ${e.content_type}` : '';
    return `${e.method} ${e.url} [${e.auth}${ct}${e.body ? `; body ${e.body}` : ''}] -> ${e.status ?? '(no answer)'}${hs ? ` {${hs}}` : ''}`;
}
function printTrace(entries) {
    if (!entries.length) return console.error('    (no HTTP request was made)');
    for (const e of entries) console.error(`    ${fmtEntry(e)}`);
}

// The browser build is an ES module bundling rxjs etc.; import it only now that the globals exist.
const pc = await import('@placeos/ts-client/dist/index.es.js');

// ---------------------------------------------------------------------------------------
// Helpers.
class Mismatch extends Error {}
const show = (v) => inspect(v, { depth: 4, breakLength: Infinity, compact: true });
function expect(what, actual, expected) {
    if (!isDeepStrictEqual(actual, expected))
        throw new Mismatch(`${what}: expected ${show(expected)}, got ${show(actual)}`);
}
function expectThat(what, ok, actual) {
    if (!ok) throw new Mismatch(`${what}; got ${show(actual)}`);
}
// Plain data (the client wraps results in classes).
const plain = (v) => JSON.parse(JSON.stringify(v));

/** First value of a client Observable, or a rejection naming the call. */
function call(name, observable, ms = CALL_MS) {
    return new Promise((resolve, reject) => {
        let done = false;
        let sub;
        const timer = setTimeout(() => {
            done = true;
            sub?.unsubscribe();
            reject(new Mismatch(`${name}: no answer within ${ms} ms`));
        }, ms);
        sub = observable.subscribe({
            next: (v) => {
                if (done) return;
                done = true;
                clearTimeout(timer);
                resolve(v);
            },
            error: async (e) => {
                if (done) return;
                done = true;
                clearTimeout(timer);
                reject(new Mismatch(`${name} threw: ${await describeError(e)}`));
            },
            complete: () => {
                if (done) return;
                done = true;
                clearTimeout(timer);
                resolve(undefined);
            },
        });
        if (done) sub.unsubscribe();
    });
}
async function describeError(e) {
    // The client rejects with the fetch Response for HTTP errors.
    if (e && typeof e.status === 'number' && typeof e.text === 'function') {
        const body = await e.text().catch(() => '');
        return `HTTP ${e.status} for ${redactUrl(e.url || '?')}: ${body.slice(0, 300)}`;
    }
    return e instanceof Error ? `${e.name}: ${e.message}` : show(e);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Call `fn` until `ok(value)`, for up to POLL_MS; returns the last value. */
async function poll(fn, ok) {
    const deadline = Date.now() + POLL_MS;
    for (;;) {
        const v = await fn();
        if (ok(v) || Date.now() > deadline) return v;
        await sleep(250);
    }
}

const failures = [];
async function check(name, fn) {
    checkStart = trace.length;
    try {
        const detail = await fn();
        console.log(`ok - ${name}${detail ? ` (${detail})` : ''}`);
        return true;
    } catch (e) {
        const msg = e instanceof Mismatch ? e.message : `threw ${e?.stack || show(e)}`;
        console.error(`FAIL - ${name}: ${msg}`);
        console.error('  requests made by this check:');
        printTrace(trace.slice(checkStart));
        failures.push(name);
        return false;
    }
}

// ---------------------------------------------------------------------------------------
// The checks.
const API = `${origin.origin}/api/engine/v2`;
const TOKEN_URI = '/auth/oauth/token';

const setupOk = await check('setup() loads GET /auth/authority and selects the v2 API', async () => {
    const setupDone = pc.setup({
        host: origin.host,
        secure: origin.protocol === 'https:',
        auth_type: 'password', // the client's own password grant (POST token_uri?grant_type=password&...)
        username: USER,
        password: PASSWORD,
        token_uri: TOKEN_URI,
        auth_uri: '/auth/oauth/authorize',
        redirect_uri: `${origin.origin}/compat/oauth-resp.html`,
        scope: 'public',
        storage: 'local',
        handle_login: false,
        token_header: false,
    });
    await Promise.race([
        setupDone,
        sleep(CALL_MS).then(() => {
            throw new Mismatch(`setup() did not resolve within ${CALL_MS} ms`);
        }),
    ]);
    const a = pc.authority();
    expectThat('authority() is loaded with an id', a && typeof a.id === 'string' && a.id, a);
    expectThat(
        'authority().version must look like a 2.x+ semantic version',
        /[2-9]\.[0-9]+\.[0-9]+/.test(a.version || ''),
        a.version,
    );
    expect('apiEndpoint()', pc.apiEndpoint(), API);
    return `authority ${a.id}, version ${a.version}`;
});

if (!setupOk) finish(); // nothing else can work without the authority

const gotToken = await check('password grant through setup({auth_type: "password"}) yields a bearer token', async () => {
    const t = pc.token();
    const asked = trace.some((e) => e.method === 'POST' && e.url.startsWith(`${TOKEN_URI}?`));
    expectThat(`the client POSTed to ${TOKEN_URI}`, asked, trace.map(fmtEntry));
    expectThat('token() is a bearer token after setup()', t && t !== 'x-api-key', t ? '<a token>' : t);
    expectThat('isOnline()', pc.isOnline(), pc.isOnline());
});
if (!gotToken) {
    // Hand a token to the client ourselves so the remaining checks still say something.
    const handed = await check(`fallback: token from POST ${TOKEN_URI} handed over with setToken()`, async () => {
        const q = new URLSearchParams({ grant_type: 'password', username: USER, password: PASSWORD, client_id: pc.clientId() });
        const r = await fetch(`${origin.origin}${TOKEN_URI}?${q}`, { method: 'POST' });
        const body = await r.json().catch(() => ({}));
        expect(`POST ${TOKEN_URI} status`, r.status, 200);
        expectThat('the token response has access_token', typeof body.access_token === 'string', Object.keys(body));
        pc.setToken(body.access_token, Date.now() + 3600 * 1000);
    });
    if (!handed) finish();
}

let systems = [];
let total = 0;
await check('querySystems() lists systems with X-Total-Count', async () => {
    const r = await call('querySystems()', pc.querySystems());
    expectThat('querySystems() answers {total, next, data}', r && Array.isArray(r.data), r);
    systems = r.data.map(plain);
    expectThat('at least one system', systems.length > 0, systems);
    for (const s of systems) {
        expectThat('each system has a sys-… id', typeof s.id === 'string' && s.id.startsWith('sys-'), s);
        expectThat('each system has a name', typeof s.name === 'string' && s.name.length > 0, s);
        expectThat('each system has a modules list', Array.isArray(s.modules), s);
    }
    total = r.total;
    expect('total (read from X-Total-Count)', r.total, systems.length);
    expect('next (from Link rel="next") when every system fits one page', r.next, null);
    return `${systems.length} systems`;
});
if (!systems.length) finish();
const sys = systems[0];

if (systems.length >= 2) {
    await check('querySystems({limit: 1}) pages with the Link header', async () => {
        const r = await call('querySystems({limit: 1})', pc.querySystems({ limit: 1 }));
        expect('data ids on page 1', r.data.map((s) => s.id), [systems[0].id]);
        expect('total (X-Total-Count) on page 1', r.total, total);
        expectThat('next() is offered: a `Link: <…?limit=1&offset=1>; rel="next"` header', typeof r.next === 'function', r.next);
        const r2 = await call('querySystems({limit: 1}).next()', r.next());
        expect('data ids on page 2', r2.data.map((s) => s.id), [systems[1].id]);
        expect('total (X-Total-Count) on page 2', r2.total, total);
    });
}

await check(`showSystem("${sys.id}")`, async () => {
    const s = plain(await call('showSystem()', pc.showSystem(sys.id)));
    for (const k of ['id', 'name', 'description', 'capacity', 'modules', 'zones'])
        expect(`showSystem().${k} vs the querySystems() entry`, s[k], sys[k]);
});

// Resolve the system's module names (custom_name, else the driver's module_name) in list order.
let names = null; // [[module id, name], ...] in the system's order
let displayId = null;
await check(`queryModules({control_system_id}) + showDriver() name the system's modules`, async () => {
    const r = await call('queryModules()', pc.queryModules({ control_system_id: sys.id }));
    const mods = new Map(r.data.map((m) => [m.id, m]));
    expect('queryModules() ids vs the system modules list', [...mods.keys()].sort(), [...sys.modules].sort());
    names = [];
    for (const id of sys.modules) {
        const m = mods.get(id);
        let name = m.custom_name;
        if (!name) {
            const d = await call(`showDriver("${m.driver_id}")`, pc.showDriver(m.driver_id));
            name = d.module_name;
        }
        expectThat(`module ${id} has a name (custom_name or its driver's module_name)`, !!name, name);
        names.push([id, name]);
    }
    displayId = names.find(([, n]) => n === 'Display')?.[0];
    expectThat('the first system has a Display module', !!displayId, names);
    return names.map(([id, n]) => `${n}=${id}`).join(', ');
});

let state = null;
await check('systemModuleState(sys, "Display", 1)', async () => {
    state = await poll(
        () => call('systemModuleState()', pc.systemModuleState(sys.id, 'Display', 1)),
        (s) => s && s.connected === true && typeof s.power === 'boolean',
    );
    expectThat('state is an object with connected: true and a boolean power (waited 10 s)', state && state.connected === true && typeof state.power === 'boolean', state);
    return show(state);
});

await check('lookupSystemModuleState(sys, "Display", 1, "power")', async () => {
    const v = await call('lookupSystemModuleState()', pc.lookupSystemModuleState(sys.id, 'Display', 1, 'power'));
    expect('power', v, state?.power);
});

if (displayId) {
    await check(`moduleState("${displayId}")`, async () => {
        // PlaceOS answers module state as stored: each value JSON-encoded in a string.
        const s = await call('moduleState()', pc.moduleState(displayId));
        expectThat('every value is a string', s && Object.values(s).every((v) => typeof v === 'string'), s);
        const decoded = Object.fromEntries(Object.entries(s).map(([k, v]) => [k, JSON.parse(v)]));
        expect('moduleState() decoded vs systemModuleState() of Display_1', decoded, state);
    });
    await check(`lookupModuleState("${displayId}", "power")`, async () => {
        const v = await call('lookupModuleState()', pc.lookupModuleState(displayId, 'power'));
        expect('power (JSON-encoded, as PlaceOS answers)', v, JSON.stringify(state?.power));
    });
    await check(`executeOnModule("${displayId}", "power", [false])`, async () => {
        const r = await call('executeOnModule()', pc.executeOnModule(displayId, 'power', [false]));
        const v = await poll(
            () => call('lookupSystemModuleState()', pc.lookupSystemModuleState(sys.id, 'Display', 1, 'power')),
            (p) => p === false,
        );
        expect('power read back after exec (waited 10 s)', v, false);
        return `returned ${show(r)}`;
    });
}

await check('executeOnSystem(sys, "power", "Display", 1, [true])', async () => {
    const readPower = () =>
        call('lookupSystemModuleState()', pc.lookupSystemModuleState(sys.id, 'Display', 1, 'power'));
    if ((await readPower()) === true) {
        // Already on (an earlier run): switch it off first so that [true] is seen to act.
        await call('executeOnSystem(…, [false])', pc.executeOnSystem(sys.id, 'power', 'Display', 1, [false]));
        expect('power read back after [false] (waited 10 s)', await poll(readPower, (p) => p === false), false);
    }
    const r = await call('executeOnSystem()', pc.executeOnSystem(sys.id, 'power', 'Display', 1, [true]));
    const v = await poll(
        () => call('lookupSystemModuleState()', pc.lookupSystemModuleState(sys.id, 'Display', 1, 'power')),
        (p) => p === true,
    );
    expect('power read back with lookupSystemModuleState() (waited 10 s)', v, true);
    const s = await call('systemModuleState()', pc.systemModuleState(sys.id, 'Display', 1));
    expect('systemModuleState().power', s?.power, true);
    return `returned ${show(r)}`;
});

await check('functionList(sys, "Display", 1)', async () => {
    const f = await call('functionList()', pc.functionList(sys.id, 'Display', 1));
    expectThat('an object keyed by function name', f && typeof f === 'object' && !Array.isArray(f), f);
    for (const [name, d] of Object.entries(f)) {
        expectThat(`${name}: {arity, params, order}`, d && typeof d.arity === 'number' && d.params && Array.isArray(d.order), d);
        expect(`${name}.order is the params' keys`, d.order, Object.keys(d.params));
        expect(`${name}.arity is the number of params`, d.arity, d.order.length);
    }
    expectThat('power is listed', !!f.power, Object.keys(f));
    expect('power.order', f.power.order, ['state']);
    expectThat('power.params.state is a JSON Schema with type boolean', f.power.params.state?.type === 'boolean', f.power.params);
    return Object.keys(f).join(', ');
});

await check('types: GET /systems/:id/types through the client get() (4.7.7 has no wrapper)', async () => {
    const t = await call('get(…/types)', pc.get(`${pc.apiEndpoint()}/systems/${sys.id}/types`));
    const want = {};
    for (const [, n] of names || []) want[n] = (want[n] || 0) + 1;
    expectThat('an object of module name -> count', t && typeof t === 'object' && Object.values(t).every(Number.isInteger), t);
    if (names) expect('types vs the module names', plain(t), want);
    return show(t);
});

// ---------------------------------------------------------------------------------------
// The WebSocket (realtime) API: bind, exec, notify, unbind, debug, reconnect.
const displayOpts = (name) => ({ sys: sys.id, mod: 'Display', index: 1, name });
/** The first value of `observable` that passes `ok`, within `ms`. */
function firstValue(name, observable, ok, ms = CALL_MS) {
    return new Promise((resolve, reject) => {
        let sub;
        const timer = setTimeout(() => {
            sub?.unsubscribe();
            reject(new Mismatch(`${name}: no matching value within ${ms} ms (last: ${show(last)})`));
        }, ms);
        let last;
        sub = observable.subscribe((v) => {
            last = v;
            if (ok(v)) {
                clearTimeout(timer);
                queueMicrotask(() => sub?.unsubscribe());
                resolve(v);
            }
        });
    });
}
const readPower = () => call('lookupSystemModuleState()', pc.lookupSystemModuleState(sys.id, 'Display', 1, 'power'));
const power = pc.getModule(sys.id, 'Display_1').variable('power');
let bound = false;
await check('variable("power").bind() on Display_1: the current value arrives as a notify', async () => {
    const now = await readPower();
    power.bind();
    const v = await firstValue('power.listen()', power.listen(), (x) => typeof x === 'boolean');
    expect('the bound value vs REST', v, now);
    expectThat('the WebSocket authenticated with the cookie the client set', sockets.length > 0, sockets);
    bound = true;
    return `power = ${v} over ${sockets[0]}`;
});
if (bound) {
    await check('execute("power", [!power]) over the WebSocket: success, then the notify', async () => {
        const before = power.value;
        const r = await Promise.race([
            pc.getModule(sys.id, 'Display_1').execute('power', [!before]),
            sleep(CALL_MS).then(() => {
                throw new Mismatch('execute() did not answer');
            }),
        ]);
        expect('execute() result', r, null);
        const v = await firstValue('power.listen()', power.listen(), (x) => x === !before);
        expect('REST agrees', await readPower(), v);
        return `${before} -> ${v}`;
    });
}
await check('bind() then unbind() of Display_1.volume: values stop', async () => {
    const opts = displayOpts('volume');
    await pc.bind(opts);
    const v = await firstValue('listen(volume)', pc.listen(opts), (x) => typeof x === 'number');
    await pc.unbind(opts);
    const next = v >= 50 ? v - 7 : v + 7;
    await call('executeOnSystem(volume)', pc.executeOnSystem(sys.id, 'volume', 'Display', 1, [next]));
    await poll(
        () => call('lookupSystemModuleState(volume)', pc.lookupSystemModuleState(sys.id, 'Display', 1, 'volume')),
        (x) => x === next,
    );
    await sleep(500);
    expect('the unbound value stays as it was', pc.value(opts), v);
    return `volume stayed ${v} while the display went to ${next}`;
});
if (displayId) {
    await check(`debug() of ${displayId}: its traffic arrives on debug_events; ignore() stops it`, async () => {
        const events = [];
        const sub = pc.debug_events.subscribe((e) => events.push(e));
        const opts = { sys: sys.id, mod: displayId, index: 1, name: 'debug' };
        try {
            await pc.debug(opts);
            await call('executeOnSystem(power)', pc.executeOnSystem(sys.id, 'power', 'Display', 1, [power.value ?? true]));
            const deadline = Date.now() + POLL_MS;
            while (!events.some((e) => /^sent: POWER/.test(e.message)) && Date.now() < deadline) await sleep(50);
            const sent = events.find((e) => /^sent: POWER/.test(e.message));
            expectThat('a `sent: POWER …` line for the module', !!sent, events);
            expect('its mod_id', sent.mod_id, displayId);
            expect('its level', sent.level, 'debug');
            await pc.ignore(opts);
            const seen = events.length;
            await call('executeOnSystem(power)', pc.executeOnSystem(sys.id, 'power', 'Display', 1, [power.value ?? true]));
            await sleep(500);
            expect('lines after ignore()', events.slice(seen), []);
            return `${events.length} lines, e.g. ${show(sent.message)}`;
        } finally {
            sub.unsubscribe();
        }
    });
}
if (bound && env.LINTEL_COMPAT_RESTART === '1') {
    await check('a server restart: the client reconnects and rebinds Display_1.power', async () => {
        const before = sockets.length;
        console.log('RESTART LINTEL');
        const { createInterface } = await import('node:readline');
        const line = await new Promise((resolve) => createInterface({ input: process.stdin }).once('line', resolve));
        expect('the supervisor restarted the server', line.trim(), 'restarted');
        const deadline = Date.now() + 20000;
        while (!(pc.is_connected() && sockets.length > before) && Date.now() < deadline) await sleep(100);
        expectThat('connected again on a new socket within 20 s', pc.is_connected() && sockets.length > before, sockets);
        // A change made on the new server reaches the old binding: it was bound again.
        const now = await readPower();
        await call('executeOnSystem(power)', pc.executeOnSystem(sys.id, 'power', 'Display', 1, [!now]));
        const v = await firstValue('power.listen() after the restart', power.listen(), (x) => x === !now, 20000);
        return `reconnected after ${sockets.length - before} attempt(s); power ${now} -> ${v}`;
    });
} else if (bound) {
    console.log('skip - a server restart: set LINTEL_COMPAT_RESTART=1 under a supervisor that restarts lintel');
}

finish();

function finish() {
    clearTimeout(hardStop);
    if (failures.length) {
        console.error(`${failures.length} check(s) failed: ${failures.join('; ')}`);
        process.exit(1);
    }
    console.log('all checks passed');
    process.exit(0);
}
