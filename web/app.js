// Corral's web page: random images, live uploads over the WebSocket (/v1/ws), image
// upload, sign-up / sign-in, your images, event search and reminders. Plain DOM, fetch and
// async/await: no libraries, no build step. Server text only ever goes through
// textContent / DOM APIs, never innerHTML.
'use strict';

const TOKEN_KEY = 'corral.token';
const USER_KEY = 'corral.user';
const LIVE_MAX = 20;
const WS_MIN_DELAY = 1000;
const WS_MAX_DELAY = 30000;

const state = {
  token: storageGet(TOKEN_KEY),
  user: parseJson(storageGet(USER_KEY)), // { username, email }
  ws: null,
  wsDelay: WS_MIN_DELAY,
  wsTimer: null,
  wsOpenedBefore: false,
  events: new Map(), // event id -> event, for reminder titles
  eventLookups: new Set(), // event ids already fetched (or being fetched)
  reminders: new Map(), // reminder id -> reminder
  eventsQuery: new URLSearchParams(),
  eventsNext: null,
  mineNext: null, // cursor of the next page of "Your images"
  draft: null, // the chosen file's draft upload: { file, promise }
};

/** The events window the server searches when given none: this many days on. */
const DEFAULT_WINDOW_DAYS = 7;
/** The longest window the server searches ("All upcoming"). */
const MAX_WINDOW_DAYS = 365;

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

// ---------------------------------------------------------------- small helpers

function $(selector) {
  return document.querySelector(selector);
}

/** Creates an element with properties and children (strings become text nodes). */
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function parseJson(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

function storageGet(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function storageSet(key, value) {
  try {
    if (value == null) localStorage.removeItem(key);
    else localStorage.setItem(key, value);
  } catch {
    // Storage is off (private mode): the session lasts as long as the page.
  }
}

/** Shows a message in a status region; kind is 'ok', 'error' or '' (neutral). */
function setStatus(target, text, kind = '') {
  target.textContent = text;
  target.dataset.kind = kind;
}

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : timeFormat.format(date);
}

function timeElement(iso) {
  return el('time', { dateTime: iso }, formatTime(iso));
}

/** A Date as a datetime-local input value, in local time. */
function toLocalInput(date) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** Disables a button while an async action runs. */
async function whileBusy(button, action) {
  button.disabled = true;
  try {
    await action();
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- the HTTP API

class ApiError extends Error {
  constructor(status, title, detail) {
    super(status ? `${status} ${title}: ${detail}` : detail);
    this.status = status;
    this.detail = detail;
  }
}

/** Calls the API; resolves to the parsed JSON (null for 204), throws ApiError. */
async function api(path, { method = 'GET', json, body, headers = {}, auth = true, token } = {}) {
  const sent = { Accept: 'application/json', ...headers };
  const bearer = token || (auth ? state.token : null);
  if (bearer) sent.Authorization = `Bearer ${bearer}`;
  if (json !== undefined) {
    sent['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  }
  let response;
  let text;
  try {
    response = await fetch(path, { method, headers: sent, body });
    text = await response.text();
  } catch (e) {
    throw new ApiError(0, '', `Network error: ${e.message || e}. Check your connection and try again.`);
  }
  const data = parseJson(text);
  if (!response.ok) {
    const title = (data && data.title) || response.statusText || 'Error';
    const detail = (data && data.detail) || text || 'the server gave no detail';
    if (response.status === 401 && bearer && bearer === state.token) forgetSession();
    throw new ApiError(response.status, title, detail);
  }
  return data;
}

// ---------------------------------------------------------------- accounts

function renderSession() {
  const signedIn = Boolean(state.token && state.user);
  $('#session-status').textContent = signedIn ? `Signed in as ${state.user.username}` : 'Not signed in';
  $('#account-name').textContent = signedIn ? state.user.username : '';
  $('#signout').hidden = !signedIn;
  document.body.classList.toggle('signed-in', signedIn);
  if (!signedIn) {
    $('#mine-list').replaceChildren();
    $('#mine-empty').hidden = true;
    $('#mine-more').hidden = true;
  }
  renderReminders();
}

function saveSession(token, user) {
  state.token = token;
  state.user = user;
  storageSet(TOKEN_KEY, token);
  storageSet(USER_KEY, JSON.stringify(user));
  renderSession();
}

function forgetSession() {
  if (!state.token && !state.user) return;
  wsSend({ op: 'unsubscribe', topic: 'reminders' });
  state.token = null;
  state.user = null;
  state.reminders.clear();
  storageSet(TOKEN_KEY, null);
  storageSet(USER_KEY, null);
  renderSession();
}

/** Refreshes the stored account from the server (drops the session if it ended). */
async function refreshMe() {
  try {
    const me = await api('/v1/users/me');
    saveSession(state.token, { username: me.username, email: me.email });
    loadReminders();
    loadMine(false);
  } catch (e) {
    if (e.status === 401) setStatus($('#account-status'), 'Your session has ended; sign in again.', 'error');
  }
}

async function signIn(login, password) {
  const session = await api('/v1/sessions', { method: 'POST', json: { login, password }, auth: false });
  const me = await api('/v1/users/me', { token: session.token });
  saveSession(session.token, { username: me.username, email: me.email });
  wsAuth();
  loadReminders();
  loadMine(false);
}

/** Creates an account; retries without the time zone if the server does not know it. */
async function signUp(username, email, password) {
  const body = { username, email, password };
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zone) body.time_zone = zone;
  try {
    return await api('/v1/users', { method: 'POST', json: body, auth: false });
  } catch (e) {
    if (e.status !== 400 || !body.time_zone || !/time zone/i.test(e.detail)) throw e;
    delete body.time_zone;
    return api('/v1/users', { method: 'POST', json: body, auth: false });
  }
}

async function onSignIn(event) {
  event.preventDefault();
  const status = $('#account-status');
  const login = $('#signin-username').value.trim();
  setStatus(status, 'Signing in…');
  await whileBusy($('#signin-submit'), async () => {
    try {
      await signIn(login, $('#signin-password').value);
      $('#signin-form').reset();
      setStatus(status, `Welcome back, ${state.user.username}.`, 'ok');
    } catch (e) {
      setStatus(status, e.message, 'error');
    }
  });
}

async function onSignUp(event) {
  event.preventDefault();
  const status = $('#account-status');
  const username = $('#signup-username').value.trim();
  const password = $('#signup-password').value;
  setStatus(status, 'Creating your account…');
  await whileBusy($('#signup-submit'), async () => {
    try {
      await signUp(username, $('#signup-email').value.trim(), password);
      setStatus(status, `Account ${username} created; signing in…`);
      await signIn(username, password); // sign-up returns the account, not a token
      $('#signup-form').reset();
      setStatus(status, `Welcome, ${state.user.username}!`, 'ok');
    } catch (e) {
      setStatus(status, e.message, 'error');
    }
  });
}

async function onSignOut() {
  const status = $('#account-status');
  await whileBusy($('#signout'), async () => {
    try {
      await api('/v1/sessions', { method: 'DELETE' });
      setStatus(status, 'Signed out.', 'ok');
    } catch (e) {
      setStatus(status, `Signed out on this page; the server said: ${e.message}`, 'error');
    }
    forgetSession();
  });
}

// ---------------------------------------------------------------- images

function altText(image, fallback) {
  return image.tags && image.tags.length
    ? `Image tagged ${image.tags.join(', ')}`
    : `${fallback} ${image.name}`;
}

// ---------------------------------------------------------------- placeholders

const B83 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~';

function base83(text) {
  let value = 0;
  for (const c of text) value = value * 83 + B83.indexOf(c);
  return value;
}

function srgbToLinear(v) {
  const x = v / 255;
  return x <= 0.04045 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
}

function linearToSrgb(v) {
  const x = Math.max(0, Math.min(1, v));
  return Math.round((x <= 0.0031308 ? x * 12.92 : 1.055 * x ** (1 / 2.4) - 0.055) * 255);
}

/** An image's BlurHash (https://blurha.sh) painted on a small canvas, as a data: URL;
 * null if there is none or it is malformed. */
function blurhashUrl(hash, width = 32, height = 32) {
  if (typeof hash !== 'string' || hash.length < 6) return null;
  const size = base83(hash[0]);
  const nx = (size % 9) + 1;
  const ny = Math.floor(size / 9) + 1;
  if (hash.length !== 4 + 2 * nx * ny) return null;
  const maxAc = (base83(hash[1]) + 1) / 166;
  const dc = base83(hash.slice(2, 6));
  const colors = [[dc >> 16, (dc >> 8) & 255, dc & 255].map(srgbToLinear)];
  for (let i = 1; i < nx * ny; i++) {
    const v = base83(hash.slice(4 + 2 * i, 6 + 2 * i));
    colors.push([Math.floor(v / 361), Math.floor(v / 19) % 19, v % 19].map((q) => {
      const f = (q - 9) / 9;
      return Math.sign(f) * f * f * maxAc;
    }));
  }
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext('2d');
  const pixels = context.createImageData(width, height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const rgb = [0, 0, 0];
      for (let j = 0; j < ny; j++) {
        for (let i = 0; i < nx; i++) {
          const basis = Math.cos((Math.PI * x * i) / width) * Math.cos((Math.PI * y * j) / height);
          colors[i + j * nx].forEach((c, k) => { rgb[k] += c * basis; });
        }
      }
      const at = 4 * (x + y * width);
      rgb.forEach((c, k) => { pixels.data[at + k] = linearToSrgb(c); });
      pixels.data[at + 3] = 255;
    }
  }
  context.putImageData(pixels, 0, 0);
  return canvas.toDataURL();
}

/** A linked thumbnail (a small variant, WebP where the browser takes it), painted with
 * its placeholder until it loads; the <img> carries data-id. */
function imageFigure(image, alt) {
  const img = el('img', {
    src: `${image.url}?w=256&format=auto`,
    srcset: `${image.url}?w=256&format=auto 1x, ${image.url}?w=512&format=auto 2x`,
    alt, loading: 'lazy', decoding: 'async',
  });
  const placeholder = blurhashUrl(image.blurhash);
  if (placeholder) {
    img.style.backgroundImage = `url(${placeholder})`;
    img.style.backgroundSize = 'cover';
    img.addEventListener('load', () => { img.style.backgroundImage = ''; }, { once: true });
  }
  if (image.width) img.width = image.width;
  if (image.height) img.height = image.height;
  img.dataset.id = image.id;
  return el('figure', {}, el('a', { href: image.url }, img));
}

async function loadRandom() {
  const input = $('#random-count');
  const status = $('#random-status');
  const count = Math.min(100, Math.max(1, parseInt(input.value, 10) || 12));
  input.value = count;
  const tag = $('#random-tag').value.trim().toLowerCase();
  const params = new URLSearchParams({ count: String(count) });
  if (tag) params.set('tag', tag);
  setStatus(status, 'Loading…');
  await whileBusy($('#random-refresh'), async () => {
    try {
      const { images } = await api(`/v1/images/random?${params}`, { auth: false });
      $('#random-grid').replaceChildren(...images.map((i) => imageFigure(i, altText(i, 'Random image'))));
      const none = tag ? `No images tagged “${tag}” yet.` : 'No images yet: upload one!';
      const what = tag ? ` tagged “${tag}”` : '';
      setStatus(status, images.length ? `${images.length} random image${images.length === 1 ? '' : 's'}${what}.` : none);
    } catch (e) {
      setStatus(status, e.message, 'error');
    }
  });
}

/** Adds an image to the live strip (newest first, at most LIVE_MAX). */
function addLive(image) {
  const strip = $('#live-strip');
  if (!image || !image.id || strip.querySelector(`img[data-id="${CSS.escape(image.id)}"]`)) return;
  strip.prepend(imageFigure(image, altText(image, 'New upload')));
  while (strip.children.length > LIVE_MAX) strip.lastElementChild.remove();
  $('#live-empty').hidden = true;
}

function showChosenFile() {
  const file = $('#upload-file').files[0];
  $('#upload-chosen').textContent = file ? `Chosen: ${file.name} (${Math.ceil(file.size / 1024)} KiB)` : '';
}

function setupDropZone() {
  const zone = $('#upload-drop');
  const input = $('#upload-file');
  for (const type of ['dragenter', 'dragover']) {
    zone.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add('dragging');
    });
  }
  zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('dragging');
    if (e.dataTransfer && e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      startDraft();
    }
  });
  input.addEventListener('change', startDraft);
}

/** Uploads the chosen file at once, as a draft (private to you, gone in a day unless
 * published), so that Publish only has to attach it. */
function startDraft() {
  showChosenFile();
  const file = $('#upload-file').files[0];
  state.draft = null;
  if (!file) return;
  const status = $('#upload-status');
  $('#upload-preview').hidden = true;
  setStatus(status, `Uploading ${file.name}…`);
  const draft = { file };
  draft.promise = uploadDraft(file).then((image) => {
    if (state.draft === draft) {
      setStatus(status, `${file.name} is uploaded as a draft: add tags and press Publish.`, 'ok');
    }
    return image;
  }, (e) => {
    if (state.draft === draft) setStatus(status, e.message, 'error');
    throw e;
  });
  // A failed draft is reported above; Publish reports it again if pressed.
  draft.promise.catch(() => {});
  state.draft = draft;
}

/** Uploads a file as a draft; resolves to the draft's JSON. */
function uploadDraft(file) {
  return api('/v1/images?draft=true', {
    method: 'POST',
    body: file,
    headers: { 'Content-Type': file.type || 'application/octet-stream' },
  });
}

/** Attaches an uploaded draft with `tags` (none: it keeps its own); the published image. */
async function attachDraft(uploaded, tags) {
  const item = { id: uploaded.id };
  if (uploaded.claim_token) item.claim_token = uploaded.claim_token;
  const json = { images: [item] };
  if (tags.length) json.tags = tags;
  const { images } = await api('/v1/images/attach', { method: 'POST', json });
  return images[0];
}

/** Publish: attaches the draft (waiting for its upload if it is still going) with the
 * form's tags. A draft whose upload failed (say, before signing in), or that expired
 * while the form stayed open, is uploaded again from the file the page still holds. */
async function onUpload(event) {
  event.preventDefault();
  const status = $('#upload-status');
  const preview = $('#upload-preview');
  const draft = state.draft;
  if (!draft) {
    setStatus(status, 'Choose an image (or drop one on the zone) first.', 'error');
    return;
  }
  const tags = $('#upload-tags').value.split(',').map((t) => t.trim()).filter(Boolean);
  await whileBusy($('#upload-submit'), async () => {
    try {
      setStatus(status, `Publishing ${draft.file.name}…`);
      let uploaded = await draft.promise.catch(() => null);
      if (!uploaded) {
        draft.promise = uploadDraft(draft.file);
        uploaded = await draft.promise;
      }
      let image;
      try {
        image = await attachDraft(uploaded, tags);
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 404) throw e;
        setStatus(status, `The draft of ${draft.file.name} expired; uploading it again…`);
        draft.promise = uploadDraft(draft.file);
        image = await attachDraft(await draft.promise, tags);
      }
      setStatus(status, `Published ${draft.file.name} as ${image.name}`, 'ok');
      preview.replaceChildren(
        imageFigure(image, altText(image, 'Uploaded image')),
        el('figcaption', {}, `${image.width}×${image.height} ${image.format || ''}`),
      );
      preview.hidden = false;
      state.draft = null;
      $('#upload-form').reset();
      showChosenFile();
      loadMine(false);
    } catch (e) {
      preview.hidden = true;
      setStatus(status, e.message, 'error');
    }
  });
}

// ---------------------------------------------------------------- your images

async function loadMine(more) {
  if (!state.token) return;
  const status = $('#mine-status');
  const list = $('#mine-list');
  const params = new URLSearchParams({ limit: '20' });
  if (more && state.mineNext) params.set('cursor', state.mineNext);
  try {
    const page = await api(`/v1/users/me/images?${params}`);
    if (!more) list.replaceChildren();
    list.append(...page.images.map(mineItem));
    state.mineNext = page.next || null;
    $('#mine-more').hidden = !state.mineNext;
    $('#mine-empty').hidden = list.children.length > 0;
    setStatus(status, '');
  } catch (e) {
    setStatus(status, e.message, 'error');
  }
}

function mineItem(image) {
  const li = el('li', { className: 'mine-item' });
  li.dataset.id = image.id;
  const remove = el('button', { type: 'button', className: 'secondary delete' }, 'Delete');
  remove.setAttribute('aria-label', `Delete ${image.name}`);
  remove.addEventListener('click', () => whileBusy(remove, () => deleteMine(image, li)));
  const tags = image.tags && image.tags.length ? image.tags.join(', ') : 'no tags';
  li.append(imageFigure(image, altText(image, 'Your image')), el('span', { className: 'hint' }, tags), remove);
  return li;
}

async function deleteMine(image, li) {
  const status = $('#mine-status');
  try {
    await api(`/v1/images/${encodeURIComponent(image.id)}`, { method: 'DELETE' });
    li.remove();
    for (const img of document.querySelectorAll(`img[data-id="${CSS.escape(image.id)}"]`)) {
      img.closest('figure').remove();
    }
    $('#mine-empty').hidden = $('#mine-list').children.length > 0;
    setStatus(status, `Deleted ${image.name}.`, 'ok');
  } catch (e) {
    setStatus(status, e.message, 'error');
  }
}

// ---------------------------------------------------------------- events

/** A date field's value for `date`, in local time. */
function toDateInput(date) {
  return toLocalInput(date).slice(0, 10);
}

/** Fills the filter's dates with the window searched: today to a week on, or a year. */
function showEventsWindow() {
  const all = $('#events-all').checked;
  const from = $('#events-from').value ? new Date(`${$('#events-from').value}T00:00`) : new Date();
  if (!$('#events-from').value) $('#events-from').value = toDateInput(from);
  const to = new Date(from);
  to.setDate(to.getDate() + (all ? MAX_WINDOW_DAYS : DEFAULT_WINDOW_DAYS) - 1);
  if (all || !$('#events-to').value) $('#events-to').value = toDateInput(to);
  $('#events-to').disabled = all;
}

/** Where the browser is, as a promise of { latitude, longitude }. */
function locate() {
  return new Promise((resolve, reject) => {
    if (!navigator.geolocation) {
      reject(new Error('This browser cannot tell where you are.'));
      return;
    }
    navigator.geolocation.getCurrentPosition(
      (position) => resolve(position.coords),
      (error) => reject(new Error(`Could not find your location: ${error.message}`)),
      { timeout: 15000, maximumAge: 300000 },
    );
  });
}

/** The search's query string, from the filter form. */
async function eventsQuery() {
  const params = new URLSearchParams();
  const topic = $('#events-topic').value.trim();
  const from = $('#events-from').value;
  const to = $('#events-to').value;
  if (topic) params.set('topic', topic);
  if (from) params.set('from', new Date(`${from}T00:00`).toISOString());
  if (to) {
    const end = new Date(`${to}T00:00`);
    end.setDate(end.getDate() + 1); // the whole "to" day
    params.set('to', end.toISOString());
  }
  if ($('#events-near').checked) {
    setStatus($('#events-status'), 'Finding your location…');
    const { latitude, longitude } = await locate();
    params.set('near', `${latitude.toFixed(5)},${longitude.toFixed(5)}`);
    params.set('radius_km', $('#events-radius').value || '50');
  }
  return params;
}

async function onSearchEvents(event) {
  if (event) event.preventDefault();
  await whileBusy($('#events-search'), async () => {
    try {
      state.eventsQuery = await eventsQuery();
    } catch (e) {
      setStatus($('#events-status'), e.message, 'error');
      return;
    }
    await loadEvents(false);
  });
}

async function loadEvents(more) {
  const status = $('#events-status');
  const list = $('#events-list');
  const params = new URLSearchParams(state.eventsQuery);
  if (more && state.eventsNext) params.set('cursor', state.eventsNext);
  setStatus(status, 'Searching…');
  try {
    const page = await api(`/v1/events?${params}`, { auth: false });
    if (!more) list.replaceChildren();
    for (const e of page.events) {
      state.events.set(e.id, e);
      list.append(eventItem(e));
    }
    state.eventsNext = page.next || null;
    $('#events-more').hidden = !state.eventsNext;
    const shown = list.children.length;
    setStatus(status, shown ? `${shown} event${shown === 1 ? '' : 's'}${state.eventsNext ? ' so far' : ''}.` : 'No events match.');
  } catch (e) {
    setStatus(status, e.message, 'error');
  }
}

function eventItem(event) {
  const li = el('li', { className: 'event' });
  li.dataset.id = event.id;
  const where = [event.location && event.location.name, (event.topics || []).join(', ')].filter(Boolean);
  li.append(
    el('h3', {}, event.title),
    el('p', { className: 'when' }, timeElement(event.starts_at), ' – ', timeElement(event.ends_at)),
    el('p', { className: 'where' }, where.join(' · ')),
  );
  if (event.description) li.append(el('p', { className: 'description' }, event.description));
  li.append(reminderForm(event));
  return li;
}

/** 1 hour before the start if that is still ahead, else 1 minute from now. */
function defaultRemindAt(startsAt) {
  const hourBefore = Date.parse(startsAt) - 3600 * 1000;
  const soon = Date.now() + 60 * 1000;
  return new Date(hourBefore > soon ? hourBefore : soon);
}

function reminderForm(event) {
  const id = `remind-at-${event.id}`;
  const input = el('input', { type: 'datetime-local', id, required: true, value: toLocalInput(defaultRemindAt(event.starts_at)) });
  input.dataset.auto = '1'; // untouched: the default is recomputed when sent
  input.addEventListener('input', () => delete input.dataset.auto);
  const button = el('button', { type: 'submit' }, 'Remind me');
  const status = el('span', { className: 'status' });
  status.setAttribute('role', 'status');
  status.setAttribute('aria-live', 'polite');
  const form = el('form', { className: 'remind needs-auth' }, el('label', { htmlFor: id }, 'Remind me at'), input, button, status);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    whileBusy(button, () => createReminder(event, input, status));
  });
  return form;
}

async function createReminder(event, input, status) {
  const at = input.dataset.auto ? defaultRemindAt(event.starts_at) : new Date(input.value);
  if (Number.isNaN(at.getTime())) {
    setStatus(status, 'Pick a date and time.', 'error');
    return;
  }
  setStatus(status, 'Setting…');
  try {
    // No `email`: the server uses the account's primary address.
    const reminder = await api('/v1/reminders', { method: 'POST', json: { event_id: event.id, remind_at: at.toISOString() } });
    upsertReminder(reminder);
    setStatus(status, `Reminder set for ${formatTime(reminder.remind_at)}.`, 'ok');
  } catch (e) {
    setStatus(status, e.message, 'error');
  }
}

// ---------------------------------------------------------------- reminders

async function loadReminders() {
  if (!state.token) return;
  const status = $('#reminders-status');
  try {
    const page = await api('/v1/reminders?limit=100');
    state.reminders = new Map(page.reminders.map((r) => [r.id, r]));
    renderReminders();
    setStatus(status, page.next ? 'Showing your first 100 reminders.' : '');
  } catch (e) {
    setStatus(status, e.message, 'error');
  }
}

function upsertReminder(reminder) {
  state.reminders.set(reminder.id, { ...state.reminders.get(reminder.id), ...reminder });
  renderReminders();
}

/** Applies a `reminders` WebSocket message. */
function applyReminderMessage(event, data) {
  if (!data || !data.id) return;
  if (event === 'cancelled') {
    if (state.reminders.has(data.id)) upsertReminder({ ...data, state: 'cancelled' });
    return;
  }
  upsertReminder({ ...data, state: data.state || event });
}

/** The event's title, fetching it once in the background when unknown. */
function eventTitle(id) {
  const known = state.events.get(id);
  if (known) return known.title;
  if (!state.eventLookups.has(id)) {
    state.eventLookups.add(id);
    api(`/v1/events/${encodeURIComponent(id)}`, { auth: false })
      .then((e) => {
        state.events.set(id, e);
        renderReminders();
      })
      .catch(() => {});
  }
  return `Event ${id}`;
}

function reminderItem(r) {
  const li = el('li', { className: 'reminder' });
  li.dataset.id = r.id;
  li.dataset.state = r.state;
  li.append(el('span', { className: 'badge' }, r.state), ' ', el('strong', {}, eventTitle(r.event_id)));
  if (r.remind_at) li.append(el('span', { className: 'hint' }, ' at ', timeElement(r.remind_at)));
  if (r.email) li.append(el('span', { className: 'hint' }, ` to ${r.email}`));
  if (r.detail) li.append(el('p', { className: 'detail' }, r.detail));
  if (r.state === 'scheduled') li.append(reminderControls(r));
  return li;
}

/** Move a scheduled reminder to another time, or cancel it. */
function reminderControls(r) {
  const id = `move-${r.id}`;
  const input = el('input', { type: 'datetime-local', id, required: true, value: toLocalInput(new Date(r.remind_at)) });
  const move = el('button', { type: 'submit', className: 'secondary' }, 'Move');
  const cancel = el('button', { type: 'button', className: 'secondary cancel' }, 'Cancel');
  const status = el('span', { className: 'status' });
  status.setAttribute('role', 'status');
  status.setAttribute('aria-live', 'polite');
  const form = el('form', { className: 'remind' }, el('label', { htmlFor: id }, 'Move to'), input, move, cancel, status);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    whileBusy(move, async () => {
      const at = new Date(input.value);
      if (Number.isNaN(at.getTime())) return setStatus(status, 'Pick a date and time.', 'error');
      try {
        const moved = await api(`/v1/reminders/${encodeURIComponent(r.id)}`, { method: 'PATCH', json: { remind_at: at.toISOString() } });
        upsertReminder(moved);
        setStatus($('#reminders-status'), `Moved to ${formatTime(moved.remind_at)}.`, 'ok');
      } catch (err) {
        setStatus(status, err.message, 'error');
      }
    });
  });
  cancel.addEventListener('click', () => whileBusy(cancel, async () => {
    try {
      await api(`/v1/reminders/${encodeURIComponent(r.id)}`, { method: 'DELETE' });
      state.reminders.delete(r.id);
      renderReminders();
      setStatus($('#reminders-status'), 'Reminder cancelled.', 'ok');
    } catch (err) {
      setStatus(status, err.message, 'error');
    }
  }));
  return form;
}

/** Rendered reminders by id: an item is rebuilt only when what it shows changed. */
const reminderNodes = new Map();

/**
 * Brings the list in line with `state.reminders`, keeping the items that did not change
 * (a reply and its WebSocket echo arrive both; a half-typed "Move to" must survive them).
 */
function renderReminders() {
  const signedIn = Boolean(state.token && state.user);
  const items = [...state.reminders.values()]
    .sort((a, b) => String(a.remind_at || '').localeCompare(String(b.remind_at || '')));
  const nodes = items.map((r) => {
    const key = JSON.stringify([r, eventTitle(r.event_id)]);
    const known = reminderNodes.get(r.id);
    if (known && known.key === key) return known.node;
    const node = reminderItem(r);
    reminderNodes.set(r.id, { key, node });
    return node;
  });
  for (const id of reminderNodes.keys()) if (!state.reminders.has(id)) reminderNodes.delete(id);
  const list = $('#reminders-list');
  const current = [...list.children];
  if (current.length !== nodes.length || current.some((node, i) => node !== nodes[i])) list.replaceChildren(...nodes);
  $('#reminders-empty').hidden = !signedIn || items.length > 0;
}

// ---------------------------------------------------------------- WebSocket

function wsUrl() {
  return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/v1/ws';
}

function setWsStatus(live) {
  const status = $('#ws-status');
  status.textContent = live ? 'live' : 'offline';
  status.dataset.state = live ? 'live' : 'offline';
}

function wsSend(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

/** Authenticates the socket and follows the user's reminders. */
function wsAuth() {
  if (!state.token) return;
  wsSend({ op: 'auth', token: state.token });
  wsSend({ op: 'subscribe', topic: 'reminders' });
}

function connectWs() {
  clearTimeout(state.wsTimer);
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch {
    scheduleReconnect();
    return;
  }
  state.ws = ws;
  ws.addEventListener('open', () => {
    state.wsDelay = WS_MIN_DELAY;
    setWsStatus(true);
    setStatus($('#live-status'), '');
    wsSend({ op: 'subscribe', topic: 'images' });
    wsAuth();
    if (state.wsOpenedBefore) loadReminders(); // catch up on what was missed
    state.wsOpenedBefore = true;
  });
  ws.addEventListener('message', (e) => onWsMessage(e.data));
  ws.addEventListener('close', () => {
    if (state.ws !== ws) return;
    state.ws = null;
    setWsStatus(false);
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  const delay = state.wsDelay;
  state.wsDelay = Math.min(delay * 2, WS_MAX_DELAY);
  setStatus($('#live-status'), `Disconnected; reconnecting in ${Math.round(delay / 1000)} s.`);
  state.wsTimer = setTimeout(connectWs, delay);
}

function onWsMessage(raw) {
  const msg = typeof raw === 'string' ? parseJson(raw) : null;
  if (!msg) return;
  if (msg.event === 'lagged') {
    const missed = (msg.data && msg.data.missed) || 'some';
    // The count covers every topic: catch up on reminders from the API.
    setStatus($('#live-status'), `Missed ${missed} updates while catching up.`);
    if (state.token) loadReminders();
  } else if (msg.event === 'error') {
    setStatus($('#live-status'), `Live updates: ${msg.detail || 'error'}`, 'error');
  } else if (msg.topic === 'images' && msg.event === 'created') {
    addLive(msg.data);
  } else if (msg.topic === 'reminders' && msg.data) {
    applyReminderMessage(msg.event, msg.data);
  }
}

// ---------------------------------------------------------------- start

function init() {
  $('#signin-form').addEventListener('submit', onSignIn);
  $('#signup-form').addEventListener('submit', onSignUp);
  $('#signout').addEventListener('click', onSignOut);
  $('#upload-form').addEventListener('submit', onUpload);
  $('#random-form').addEventListener('submit', (e) => {
    e.preventDefault();
    loadRandom();
  });
  $('#events-form').addEventListener('submit', onSearchEvents);
  $('#events-all').addEventListener('change', () => {
    if (!$('#events-all').checked) $('#events-to').value = '';
    showEventsWindow();
    onSearchEvents();
  });
  $('#account-signout').addEventListener('click', onSignOut);
  $('#mine-more').addEventListener('click', () => whileBusy($('#mine-more'), () => loadMine(true)));
  // On a phone the account forms start folded, below the images and the upload.
  $('#account-details').open = window.matchMedia('(min-width: 960px)').matches;
  showEventsWindow();
  $('#events-more').addEventListener('click', () => whileBusy($('#events-more'), () => loadEvents(true)));
  setupDropZone();
  renderSession();
  if (state.token) refreshMe();
  loadRandom();
  onSearchEvents();
  connectWs();
}

init();
