// An SSE client for the tests, on one of two npm parsers, printing one JSON report per line:
//   {"kind":"open"}                                   a response started
//   {"kind":"event","type","id","data"}               an event (id: the last event id, as an
//                                                     EventSource's MessageEvent.lastEventId)
//   {"kind":"comment","text"}                         a comment (eventsource-parser only)
//   {"kind":"error","message"}                        the connection failed or ended
//   {"kind":"done"}                                   the event whose data is END arrived
//
// usage: node sse_client.mjs eventsource|eventsource-parser URL END
//
// "eventsource" is the npm EventSource (WHATWG semantics, reconnects itself after its default
// 3 s with Last-Event-ID). "eventsource-parser" is the bare parser fed by node's own http client
// over a socket; this script reconnects at once with the last id, as an EventSource would, and
// starts a new parser per connection (an event cut off by a disconnect is never dispatched).

import http from 'node:http';
import { EventSource } from 'eventsource';
import { createParser } from 'eventsource-parser';

const [mode, url, end] = process.argv.slice(2);
const report = (value) => process.stdout.write(JSON.stringify(value) + '\n');
const finish = () => {
  report({ kind: 'done' });
  process.stdout.write('', () => process.exit(0));
};
const fatal = (error) => {
  report({ kind: 'fatal', error: String(error && error.stack ? error.stack : error) });
  process.stdout.write('', () => process.exit(1));
};
process.on('uncaughtException', fatal);
process.on('unhandledRejection', fatal);

function withEventSource() {
  const source = new EventSource(url);
  const onEvent = (event) => {
    report({ kind: 'event', type: event.type, id: event.lastEventId, data: event.data });
    if (event.data === end) {
      source.close();
      finish();
    }
  };
  source.addEventListener('open', () => report({ kind: 'open' }));
  source.addEventListener('session', onEvent);
  source.addEventListener('message', onEvent);
  source.addEventListener('error', (event) => {
    // The engine's own `event: error` is a MessageEvent with data; a failed connection is not.
    if (typeof event.data === 'string') onEvent(event);
    else report({ kind: 'error', message: String(event.message ?? '') });
  });
}

function withParser() {
  let lastEventId = '';
  let done = false;
  const connect = () => {
    const headers = { Accept: 'text/event-stream' };
    if (lastEventId) headers['Last-Event-ID'] = lastEventId;
    const request = http.get(url, { headers, agent: false }, (response) => {
      if (response.statusCode !== 200) return fatal(`HTTP ${response.statusCode}`);
      report({ kind: 'open' });
      const decoder = new TextDecoder('utf-8'); // strips one leading BOM, as the spec wants
      const parser = createParser({
        onEvent(event) {
          if (done) return;
          if (event.id !== undefined) lastEventId = event.id;
          report({ kind: 'event', type: event.event || 'message', id: lastEventId, data: event.data });
          if (event.data === end) {
            done = true;
            response.destroy();
            finish();
          }
        },
        onComment(text) {
          report({ kind: 'comment', text });
        },
        onError(error) {
          report({ kind: 'parse-error', message: String(error) });
        },
      });
      response.on('data', (chunk) => parser.feed(decoder.decode(chunk, { stream: true })));
      let ended = false;
      const again = (why) => {
        if (ended || done) return;
        ended = true;
        report({ kind: 'error', message: why });
        setImmediate(connect);
      };
      response.on('end', () => again('end of stream'));
      response.on('aborted', () => again('aborted'));
      response.on('error', (error) => again(String(error)));
      response.on('close', () => again('closed'));
    });
    request.on('error', (error) => {
      if (!done) fatal(error);
    });
  };
  connect();
}

if (mode === 'eventsource') withEventSource();
else if (mode === 'eventsource-parser') withParser();
else fatal(`unknown mode ${mode}`);
