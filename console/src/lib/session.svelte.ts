// The signed-in user, shared by every page; the Api and the event stream behind it.

import { Api, sessionStore, type User } from "./api";
import { EventStream } from "./events";

export const auth = $state({ user: null as User | null, ready: false, live: false });

export const api = new Api({
  store: sessionStore(),
  onUser: (user) => {
    auth.user = user;
    if (user) events.start();
    else events.stop();
  },
});

export const events = new EventStream(api);
events.onStatus = (connected) => {
  auth.live = connected;
};

export async function restoreSession(): Promise<void> {
  await api.restore();
  auth.ready = true;
}
