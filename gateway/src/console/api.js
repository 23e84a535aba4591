// The admin API, called with the token kept for this tab. A 401 forgets the
// token and hands the API's reason to the login form.

const KEY = 'hooklane-admin-token';

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

let unauthorized = () => {};

/** `handler(refusal)` runs whenever the API answers 401. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** A refusal: the API's `error` and `detail`; `message` reads `error: detail`. */
export class ApiError extends Error {
  constructor(status, error, detail) {
    super(`${error}: ${detail}`);
    Object.assign(this, { status, error, detail });
  }
}

/** Call `/v1{path}`: its JSON answer, or an ApiError. */
export async function api(path, { method = 'GET', body, type = 'application/json' } = {}) {
  const headers = { Authorization: `Bearer ${token.get() ?? ''}` };
  if (body !== undefined) headers['Content-Type'] = type;
  let response;
  try {
    response = await fetch(`/v1${path}`, { method, headers, body });
  } catch (e) {
    throw new ApiError(0, 'unreachable', `the gateway did not answer (${e.message})`);
  }
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // Not JSON (a proxy's error page, say): the text is the detail.
  }
  if (response.ok) return json;
  const refusal = new ApiError(response.status, json?.error ?? `http_${response.status}`, json?.detail ?? text);
  if (response.status === 401) {
    token.clear();
    unauthorized(refusal);
  }
  throw refusal;
}

/** A name as one path segment. */
export const segment = encodeURIComponent;
