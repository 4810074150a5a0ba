// A coframe dashboard: one <perspective-viewer> bound live to a room's
// Perspective table over the server's read-only WebSocket endpoint.
// The page (server/perspective/pages.py) puts its settings in
// <script type="application/json" id="coframe-page">:
//   {"dataset": "...", "branch": "...", "socket": "/perspective/...", "config": {...}}
// plus "edit": true when the page was opened with ?edit=1: then the socket has edit=1 and
// the datagrid is in its EDIT mode: a typed cell is sent as table.update(), which
// the server turns into a coframe `set` (server/perspective/editor.py).
// Plain ES modules from /assets/ (served from client/web/node_modules): no CDN, no bundler.

import perspective from "/assets/@perspective-dev/client/dist/cdn/perspective.js";
import "/assets/@perspective-dev/viewer/dist/cdn/perspective-viewer.js";
import "/assets/@perspective-dev/viewer-datagrid/dist/cdn/perspective-viewer-datagrid.js";
import { loadD3fc } from "/assets/coframe/d3fc-compat.js";

const D3FC = "/assets/@perspective-dev/viewer-d3fc/dist/cdn/perspective-viewer-d3fc.js";

const status = document.getElementById("status");

// The server starts every refusal of a grid edit with this (server/perspective/edits.py EDIT_REFUSED).
const EDIT_REFUSED = "coframe edit refused";

function show(state, text) {
    document.body.dataset.state = state;
    status.textContent = text;
}

// After a lost connection: a button that reloads the page with the viewer's
// current config in ?config=, so the user's pivots survive the reload.
function offerReload(viewer) {
    const button = document.createElement("button");
    button.textContent = "reconnect";
    button.onclick = async () => {
        const url = new URL(window.location.href);
        try {
            const { table: _table, ...config } = await viewer.save();
            url.searchParams.set("config", JSON.stringify(config));
        } catch (err) {
            console.error("could not save the viewer config", err);
        }
        window.location.assign(url.href);
    };
    status.after(button);
}

async function loadCharts() {
    // d3fc 4.4.1 needs a shim for viewer 5.5.1 (see d3fc-compat.js). Without charts the grid still works.
    try {
        await loadD3fc(D3FC);
    } catch (err) {
        console.error("chart plugins failed to load", err);
    }
}

// Connect (or reconnect) the viewer to the room's table, keeping `config`.
async function bind(viewer, page, config) {
    const url = new URL(page.socket, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const client = await perspective.websocket(url.href);
    // The endpoint's Perspective server hosts exactly this room's table.
    const names = await client.get_hosted_table_names();
    if (names.length !== 1) {
        throw new Error(`expected one table on ${page.socket}, got ${JSON.stringify(names)}`);
    }
    await viewer.load(client);
    await viewer.restore({ ...config, table: names[0] });
    const mode = page.edit
        ? "editing: type into a cell, Enter to save"
        : "read-only; edits made elsewhere appear here";
    show("live", `live: ${names[0]} (${mode})`);
    return client;
}

// The datagrid's edit mode on top of the page's config (?edit=1 only).
function withEditMode(config) {
    return { ...config, plugin_config: { ...(config.plugin_config ?? {}), edit_mode: "EDIT" } };
}

// regular-table rewrites a cell only when the value it cached for it changes, so
// after a refused edit the typed text would stay: forget the cached values of
// the body cells (but the one being typed into) and redraw them from the view.
async function redrawCells() {
    const table = document.querySelector("perspective-viewer perspective-viewer-datagrid")?.regular_table;
    if (!table) return;
    const active = table.getRootNode().activeElement;
    for (const td of table.querySelectorAll("tbody td")) {
        const meta = td === active ? undefined : table.getMeta(td);
        if (meta) meta.value = undefined;
    }
    await table.draw();
}

// The datagrid does not wait for table.update(): a refused edit is an unhandled
// rejection. Show the server's message, and put the server's values back.
function watchEdits() {
    window.addEventListener("unhandledrejection", (event) => {
        const text = String(event.reason?.message ?? event.reason ?? "");
        const at = text.indexOf(EDIT_REFUSED);
        if (at < 0) return;
        event.preventDefault();
        const message = text.slice(at);
        status.dataset.editError = message;
        status.textContent = message;
        redrawCells().catch((err) => console.error("could not redraw the grid", err));
    });
}

// Close codes after which no reconnect can succeed (PROTOCOL.md §11): the user
// may no longer read what the page shows, so it stops showing it and says why.
const FINAL = {
    4401: "signed out: your session expired or was revoked; sign in again",
    4403: "your access to this dataset was revoked; ask an admin",
    4004: "this dataset no longer exists for you",
};

function finalCode(message) {
    const code = /closed (4\d{3})\b/.exec(String(message))?.[1];
    return code !== undefined && code in FINAL ? code : null;
}

// Drop the viewer and everything it shows (its connection is already closed).
function withdraw(viewer, code) {
    const gone = document.createElement("p");
    gone.id = "withdrawn";
    gone.textContent = "This page no longer shows the dataset.";
    viewer.replaceWith(gone);
    show("error", `access ended (${code}): ${FINAL[code]}`);
}

// The server closes dashboards when the table is rebuilt (a schema change), when
// the room reloads and when the user's grant changes: reconnect a few times with
// backoff, keeping the user's pivots, then offer a button. A revoked grant or
// session (4403, 4401) or a deleted dataset (4004) is not retried: see withdraw.
async function reconnect(viewer, page, message) {
    const code = finalCode(message);
    if (code !== null) {
        withdraw(viewer, code);
        return;
    }
    let config = {};
    try {
        const { table: _table, ...saved } = await viewer.save();
        config = saved;
    } catch (err) {
        console.error("could not save the viewer config", err);
    }
    for (const delay of [250, 500, 1000, 2000, 4000]) {
        show("reconnecting", `reconnecting (${message})…`);
        await new Promise((resolve) => setTimeout(resolve, delay)); // backoff between attempts
        // A fresh element: the old one's views live on the closed connection and
        // cannot be cleaned up through it.
        const fresh = document.createElement("perspective-viewer");
        try {
            const client = await bind(fresh, page, config);
            viewer.replaceWith(fresh);
            watch(client, fresh, page);
            return;
        } catch (err) {
            console.error("reconnect failed", err);
        }
    }
    show("error", `connection lost (${message})`);
    offerReload(viewer);
}

function watch(client, viewer, page) {
    let lost = false;
    client.on_error((message) => {
        if (lost) return;
        lost = true;
        reconnect(viewer, page, message);
    });
}

async function main() {
    await loadCharts();
    const page = JSON.parse(document.getElementById("coframe-page").textContent);
    show("connecting", `connecting to ${page.dataset} (${page.branch})…`);
    const viewer = document.querySelector("perspective-viewer");
    const title = page.branch === "main" ? page.dataset : `${page.dataset} (${page.branch})`;
    const config = { plugin: "Datagrid", title, ...page.config };
    if (page.edit) watchEdits();
    const client = await bind(viewer, page, page.edit ? withEditMode(config) : config);
    watch(client, viewer, page);
}

main().catch((err) => {
    console.error(err);
    show("error", `dashboard failed: ${err?.message ?? err}`);
});
