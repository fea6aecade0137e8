// MQTT.js against a TideMQ node: connect to URL (mqtt://, mqtts://, ws://,
// wss://), subscribe, publish COUNT QoS 1 messages to the subscription,
// and exit 0 once every one has come back in order (1 on any error or
// after 10 s).
//
//   node roundtrip.js URL [CA_FILE] [PROTOCOL_VERSION (4 or 5)]
'use strict';
const fs = require('fs');
const mqtt = require('mqtt');

const [url, caFile, version] = process.argv.slice(2);
const count = 20;
const topic = `mqttjs/${process.pid}`;
const options = {
  clientId: `mqttjs-${process.pid}`,
  protocolVersion: Number(version || 4),
  reconnectPeriod: 0,
  connectTimeout: 5000,
};
if (caFile) {
  options.ca = fs.readFileSync(caFile);
  options.servername = 'localhost';
}

const fail = (why) => {
  console.error(`mqttjs: ${why}`);
  process.exit(1);
};
setTimeout(() => fail('timed out'), 10000).unref();

const client = mqtt.connect(url, options);
const received = [];
client.on('error', (e) => fail(e.message));
client.on('message', (t, payload) => {
  received.push(payload.toString());
  if (received.length < count) return;
  const expected = Array.from({ length: count }, (_, i) => `m${i}`);
  if (JSON.stringify(received) !== JSON.stringify(expected)) {
    fail(`out of order or wrong: ${received}`);
  }
  client.end(false, () => {
    console.log(`mqttjs: ${count} messages over ${url}`);
    process.exit(0);
  });
});
client.on('connect', () => {
  client.subscribe(topic, { qos: 1 }, (err) => {
    if (err) fail(`subscribe: ${err.message}`);
    for (let i = 0; i < count; i++) {
      client.publish(topic, `m${i}`, { qos: 1 }, (e) => e && fail(`publish: ${e.message}`));
    }
  });
});
