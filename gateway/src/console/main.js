// The console's shell: the login form, the navigation, and the one page
// shown. Each page module's `show(root)` fills `root` and may return a
// function that stops it (polling) when another page is shown.

import { api, token, onUnauthorized } from './api.js';
import { h } from './dom.js';
import * as lanes from './lanes.js';
import * as campaigns from './campaigns.js';
import * as events from './events.js';
import * as deadLetters from './dead-letters.js';
import * as destinations from './destinations.js';
import * as advice from './advice.js';

const PAGES = { lanes, campaigns, events, 'dead-letters': deadLetters, destinations, advice };
const main = document.querySelector('main');
const nav = document.querySelector('nav');
const login = document.querySelector('#login');
let leave = () => {};

function showLogin(reason = '') {
  leave();
  leave = () => {};
  main.replaceChildren();
  nav.hidden = true;
  login.hidden = false;
  login.querySelector('.error').textContent = reason;
  login.elements.token.focus();
}

function showPage() {
  leave();
  const name = location.hash.slice(1) in PAGES ? location.hash.slice(1) : 'lanes';
  for (const link of nav.querySelectorAll('a')) {
    if (link.hash === `#${name}`) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const root = h('section', { id: name });
  main.replaceChildren(root);
  leave = PAGES[name].show(root) ?? (() => {});
}

function enter() {
  login.hidden = true;
  nav.hidden = false;
  showPage();
}

onUnauthorized((refusal) => showLogin(refusal.message));

login.addEventListener('submit', async (event) => {
  event.preventDefault();
  token.set(login.elements.token.value);
  login.reset();
  try {
    // A token is good if the API takes it.
    await api('/campaigns');
  } catch (error) {
    token.clear();
    showLogin(error.message);
    return;
  }
  enter();
});

document.querySelector('#logout').addEventListener('click', () => {
  token.clear();
  showLogin();
});

window.addEventListener('hashchange', () => {
  if (token.get()) showPage();
});

if (token.get()) enter();
else showLogin();
