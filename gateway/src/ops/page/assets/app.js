// The technician's page. Read-only: it only GETs status, api/page and
// follows api/live (server-sent events). No framework, no CDN.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  const HISTORY = 60; // chart points per antenna (30 s at 500 ms)
  const MAX_TAGS = 300;
  const MAX_EVENTS = 50;
  const st = {
    info: null, status: null, readsPrev: new Map(), antennas: new Map(),
    tags: new Map(), paused: false, pending: 0, events: [], seqs: new Set(),
    acked: null, lastAck: null, readerEls: new Map(),
  };

  const ago = (ms) => {
    if (ms === null || ms === undefined) return '–';
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    return Math.floor(s / 3600) + ' h ago';
  };
  const bytes = (b) => {
    if (b === null || b === undefined) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return b.toFixed(i ? 1 : 0) + ' ' + u[i];
  };
  const clock = (utcMs) => new Date(utcMs).toLocaleTimeString();
  const num = (x, d) => (x === null || x === undefined) ? '–' : Number(x).toFixed(d);

  // ---------------------------------------------------------- readers ---
  function antennaKey(reader, antenna) { return reader + '#' + antenna; }

  function ensureReader(name, kind) {
    let r = st.readerEls.get(name);
    if (r) return r;
    const box = el('div', 'reader');
    box.dataset.reader = name;
    const head = el('div', 'reader-head');
    head.append(el('b', null, name), el('span', 'muted', kind || ''));
    const state = el('span', 'pill', '…');
    const rate = el('span', 'muted', '');
    head.append(state, rate);
    const error = el('div', 'error');
    const ants = el('div', 'antennas');
    box.append(head, error, ants);
    $('readers').append(box);
    r = { box, state, rate, error, ants };
    st.readerEls.set(name, r);
    return r;
  }

  function ensureAntenna(reader, antenna) {
    const key = antennaKey(reader, antenna);
    let a = st.antennas.get(key);
    if (a) return a;
    const r = ensureReader(reader);
    const box = el('div', 'antenna');
    box.dataset.antenna = String(antenna);
    const label = el('div', 'label');
    label.append(el('b', null, 'Antenna ' + antenna));
    const rate = el('span', null, '0 reads/s');
    const rssi = el('div', 'muted', 'RSSI –');
    label.append(rate, rssi);
    const canvas = el('canvas');
    canvas.width = 560; canvas.height = 96;
    canvas.title = 'reads/s (blue) and RSSI (orange, -90 to -20 dBm), last 30 s';
    box.append(label, canvas);
    const list = [...r.ants.children];
    const before = list.find((n) => Number(n.dataset.antenna) > antenna);
    r.ants.insertBefore(box, before || null);
    a = { rate, rssi, canvas, hist: [] };
    st.antennas.set(key, a);
    return a;
  }

  function draw(a) {
    const c = a.canvas, g = c.getContext('2d');
    if (!g) return;
    const w = c.width, h = c.height, n = HISTORY;
    g.clearRect(0, 0, w, h);
    const maxRate = Math.max(1, ...a.hist.map((p) => p.rate));
    const x = (i) => w - (a.hist.length - 1 - i) * (w / (n - 1));
    g.lineWidth = 2;
    g.strokeStyle = '#1a62c7';
    g.beginPath();
    a.hist.forEach((p, i) => {
      const y = h - 2 - (p.rate / maxRate) * (h - 4);
      if (i) g.lineTo(x(i), y); else g.moveTo(x(i), y);
    });
    g.stroke();
    g.fillStyle = '#e8710a';
    a.hist.forEach((p, i) => {
      if (p.rssi === null || p.rssi === undefined) return;
      const f = Math.min(1, Math.max(0, (p.rssi + 90) / 70));
      g.fillRect(x(i) - 1.5, h - 2 - f * (h - 4) - 1.5, 3, 3);
    });
  }

  function renderInfo(info) {
    for (const r of info.readers || []) {
      ensureReader(r.name, r.kind);
      for (const ant of r.antennas || []) ensureAntenna(r.name, ant);
    }
  }

  function renderReaders(status) {
    const now = Date.now();
    for (const r of status.readers || []) {
      const e = ensureReader(r.name, r.kind);
      e.state.textContent = r.state;
      e.state.className = 'pill ' + (r.state === 'running' ? 'good' : r.state === 'starting' ? 'warn' : 'bad');
      e.error.textContent = r.last_error ? 'last error: ' + r.last_error : '';
      const prev = st.readsPrev.get(r.name);
      if (prev && now > prev.t) {
        const rate = Math.max(0, (r.reads - prev.reads) * 1000 / (now - prev.t));
        e.rate.textContent = rate.toFixed(1) + ' reads/s · ' + r.reads + ' total';
      } else {
        e.rate.textContent = r.reads + ' reads';
      }
      st.readsPrev.set(r.name, { t: now, reads: r.reads });
    }
  }

  // -------------------------------------------------------- live tags ---
  function onReads(update) {
    for (const a of update.antennas || []) {
      const e = ensureAntenna(a.reader, a.antenna);
      e.hist.push({ rate: a.reads_per_sec, rssi: a.rssi_avg_dbm });
      if (e.hist.length > HISTORY) e.hist.shift();
      e.rate.textContent = a.reads_per_sec.toFixed(1) + ' reads/s';
      e.rssi.textContent = a.rssi_avg_dbm === null ? 'RSSI –'
        : 'RSSI ' + num(a.rssi_avg_dbm, 0) + ' (max ' + a.rssi_max_dbm + ') dBm';
      draw(e);
    }
    const now = Date.now();
    for (const t of update.tags || []) {
      const prev = st.tags.get(t.key);
      t.seen_at = now;
      t.first_shown = prev ? prev.first_shown : null;
      st.tags.set(t.key, t);
    }
    if (st.tags.size > MAX_TAGS) {
      const old = [...st.tags.values()].sort((a, b) => a.last_seen_utc_ms - b.last_seen_utc_ms);
      for (const t of old.slice(0, st.tags.size - MAX_TAGS)) st.tags.delete(t.key);
    }
    if (st.paused) {
      st.pending += (update.tags || []).length;
      $('pause').textContent = 'Resume (' + st.pending + ' updates)';
      return;
    }
    renderTags();
  }

  function renderTags() {
    const body = $('tags').tBodies[0];
    const rows = [...st.tags.values()].sort((a, b) => b.last_seen_utc_ms - a.last_seen_utc_ms);
    const now = Date.now();
    const frag = document.createDocumentFragment();
    for (const t of rows) {
      const tr = el('tr', now - t.seen_at < 1000 ? 'fresh' : '');
      if (t.first_shown === null) t.first_shown = now;
      tr.dataset.epc = t.epc;
      // When this row first showed, for whoever measures the page's delay.
      tr.dataset.firstShown = String(t.first_shown);
      const id = el('td', 'id', t.identity);
      if (t.identity !== t.epc) id.append(el('small', null, t.epc));
      tr.append(
        id,
        el('td', null, (t.read_points || []).join(', ') || '(' + t.reader + ')'),
        el('td', null, t.antenna),
        el('td', null, num(t.rssi_dbm, 0) + ' / ' + num(t.peak_rssi_dbm, 0)),
        el('td', null, t.count),
        el('td', null, clock(t.last_seen_utc_ms)),
      );
      frag.append(tr);
    }
    body.replaceChildren(frag);
    $('tag-count').textContent = rows.length ? rows.length + ' tag(s)' : '';
    $('tags-empty').hidden = rows.length > 0;
  }

  $('pause').addEventListener('click', () => {
    st.paused = !st.paused;
    st.pending = 0;
    $('pause').textContent = st.paused ? 'Resume' : 'Pause';
    $('pause').classList.toggle('on', st.paused);
    if (!st.paused) renderTags();
  });

  // ----------------------------------------------------------- events ---
  // Fields every tag event has, shown in the line itself; anything else
  // (flags, verdicts, and fields future versions add) is shown generically.
  const PLAIN = new Set(['id', 'seq', 'type', 'gateway', 'site', 'read_point', 'reader', 'time',
    'clock_synced', 'identity', 'first_seen', 'last_seen', 'read_count', 'peak_rssi_dbm',
    'antennas', 'epcis', 'tap', 'flags']);
  const isColourKey = (k) => /colou?r|light/.test(k);
  const colourClass = (v) => 'swatch c-' + String(v).toLowerCase().replace(/[^a-z]/g, '');
  const verdictBadge = (v) => el('span', 'badge ' + (/^genuine/.test(v) ? 'good' : 'bad'), v);

  const identityOf = (id) => id.pure_identity || id.digital_link || id.epc || id.uid;
  const itemLabel = (v) => {
    const who = v && v.identity && identityOf(v.identity);
    return who ? String(who).split('?')[0] : JSON.stringify(v);
  };

  function field(li, key, value, depth) {
    if (value === null || value === undefined) return;
    if (key === 'verdict' || key.endsWith('_verdict')) { li.append(verdictBadge(String(value))); return; }
    if (isColourKey(key) && typeof value === 'string') {
      const b = el('span', 'badge');
      b.append(el('span', colourClass(value)), key + ': ' + value);
      li.append(b);
      return;
    }
    if (Array.isArray(value)) {
      if (!value.length) return;
      if (value.some((v) => v !== null && typeof v === 'object')) {
        // A pass's tags (there may be hundreds): the count, the list on demand.
        const d = el('details', 'badge');
        d.append(el('summary', null, key + ': ' + value.length));
        d.append(el('span', null, value.slice(0, 1000).map(itemLabel).join(', ')));
        li.append(d);
        return;
      }
      li.append(el('span', 'badge', key + ': ' + value.join(', ')));
      return;
    }
    if (typeof value === 'object') {
      if (depth > 0) { li.append(el('span', 'badge', key + ': ' + JSON.stringify(value))); return; }
      for (const [k, v] of Object.entries(value)) field(li, key === 'sun' ? k : k, v, depth + 1);
      return;
    }
    li.append(el('span', 'badge', key + ': ' + value));
  }

  function renderEvent(ev) {
    const li = el('li');
    li.dataset.seq = ev.seq;
    li.dataset.type = ev.type;
    li.append(el('span', 'muted', clock(Date.parse(ev.time)) + ' '), el('span', 'type', ev.type));
    if (ev.read_point) li.append(el('span', null, ev.read_point + ' '));
    const id = ev.identity || {};
    // A tap's URL carries its SUN values: shown without the query, as the
    // log does, so the page never hands out a replayable URL.
    const who = identityOf(id);
    if (who) li.append(el('span', null, String(who).split('?')[0] + ' '));
    if (ev.read_count) li.append(el('span', 'muted', ev.read_count + ' reads '));
    for (const f of ev.flags || []) li.append(el('span', 'badge flag', f));
    for (const [k, v] of Object.entries(ev)) if (!PLAIN.has(k)) field(li, k, v, 0);
    return li;
  }

  function onEvents(list) {
    for (const ev of list) {
      if (st.seqs.has(ev.seq)) continue;
      st.seqs.add(ev.seq);
      st.events.unshift(ev);
    }
    st.events.sort((a, b) => b.seq - a.seq);
    while (st.events.length > MAX_EVENTS) st.seqs.delete(st.events.pop().seq);
    $('events').replaceChildren(...st.events.map(renderEvent));
    $('events-empty').hidden = st.events.length > 0;
  }

  // ----------------------------------------------------- uplink, about ---
  function dl(id, pairs) {
    const frag = document.createDocumentFragment();
    for (const [k, v, cls] of pairs) {
      frag.append(el('dt', null, k));
      const d = el('dd', cls || null);
      d.dataset.field = k;
      if (v instanceof Node) d.append(v); else d.textContent = v;
      frag.append(d);
    }
    $(id).replaceChildren(frag);
  }

  function renderUplink(s) {
    const store = s.store || {};
    const p = s.publisher;
    const now = Date.now();
    if (p) {
      if (st.acked !== null && p.messages_acked > st.acked) st.lastAck = now;
      st.acked = p.messages_acked;
    }
    const size = el('span');
    const max = st.info && st.info.store_max_bytes;
    if (max) {
      const m = el('meter');
      m.min = 0; m.max = max; m.value = store.bytes || 0; m.high = max * 0.8;
      size.append(m, ' ' + bytes(store.bytes) + ' of ' + bytes(max));
    } else {
      size.textContent = bytes(store.bytes);
    }
    const conn = el('span', 'pill ' + (p ? (p.connected ? 'good' : 'bad') : ''), p ? (p.connected ? 'connected' : 'disconnected') : 'no [mqtt]');
    dl('uplink', [
      ['Broker', (st.info && st.info.broker) || 'off'],
      ['Connection', conn],
      ['Outbox depth', String(store.pending ?? '–')],
      ['Oldest pending', store.oldest_pending_age_secs === null || store.oldest_pending_age_secs === undefined ? '–' : num(store.oldest_pending_age_secs, 1) + ' s'],
      ['Last PUBACK', p ? (p.last_puback_utc_ms ? ago(now - p.last_puback_utc_ms) + ' (' + clock(p.last_puback_utc_ms) + ')'
        : st.lastAck ? ago(now - st.lastAck) : 'none yet') : '–'],
      ['Published up to', 'seq ' + (store.published_upto ?? '–') + ' of ' + (store.last_seq ?? '–')],
      ['Publish latency', p ? num(p.publish_latency_ms.last, 1) + ' ms (max ' + num(p.publish_latency_ms.max, 1) + ')' : '–'],
      ['Overflow drops', String(store.dropped_total ?? 0), store.dropped_total ? 'error' : ''],
      ['Store size', size],
    ]);
  }

  function renderAbout(s) {
    const synced = st.info ? (st.info.clock_synced ? 'synchronised' : 'NOT synchronised (timestamps flagged)') : '–';
    dl('about', [
      ['Gateway', s.gateway + ' at ' + s.site],
      ['Version', s.version],
      ['Config', s.config_hash],
      ['Up', Math.floor(s.uptime_secs / 60) + ' min'],
      ['Clock', synced, st.info && !st.info.clock_synced ? 'error' : ''],
      ['Viewers', st.info ? st.info.viewers + ' of ' + st.info.max_viewers : '–'],
      ['Health', s.health ? (s.health.ok ? 'OK' : s.health.reasons.join('; ')) : '–'],
    ]);
    $('gateway').textContent = s.gateway;
    $('site').textContent = s.site;
    document.title = s.gateway + ' · tracegate';
    const h = $('health');
    h.textContent = s.health && s.health.ok ? 'healthy' : 'unhealthy';
    h.className = 'pill ' + (s.health && s.health.ok ? 'good' : 'bad');
  }

  // ------------------------------------------------------------ fetch ---
  async function getJson(path) {
    const r = await fetch(path, { cache: 'no-store' });
    if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
    return r.json();
  }

  async function pollInfo() {
    try {
      st.info = await getJson('api/page');
      renderInfo(st.info);
    } catch (e) { /* shown by the status poll */ }
  }

  async function pollStatus() {
    try {
      const s = await getJson('status');
      st.status = s;
      renderReaders(s);
      renderUplink(s);
      renderAbout(s);
    } catch (e) {
      const h = $('health');
      h.textContent = 'gateway unreachable';
      h.className = 'pill bad';
    }
  }

  function follow() {
    const live = $('live');
    const es = new EventSource('api/live');
    es.addEventListener('open', () => { live.textContent = 'live'; live.className = 'pill good'; });
    es.addEventListener('reads', (m) => onReads(JSON.parse(m.data)));
    es.addEventListener('events', (m) => onEvents(JSON.parse(m.data)));
    es.addEventListener('error', () => {
      if (es.readyState === EventSource.CLOSED) {
        // Refused (too many viewers) or the gateway restarted: try again later.
        live.textContent = 'live view unavailable, retrying';
        live.className = 'pill warn';
        setTimeout(follow, 10000);
      } else {
        live.textContent = 'reconnecting…';
        live.className = 'pill warn';
      }
    });
  }

  // For the browser test: how an event of a kind this page does not know
  // yet renders (read-only, builds a detached element).
  window.tracegatePage = { renderEvent };

  pollInfo().then(() => {
    pollStatus();
    follow();
  });
  setInterval(pollStatus, 2000);
  setInterval(pollInfo, 30000);
}());
