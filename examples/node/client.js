// A Node.js client of the loyalty ledger: @grpc/grpc-js with @grpc/proto-loader, which reads
// the .proto files in ../../protos at run time (no generated code).
//
// It creates a scheme and a wallet (fresh ids on every run), credits points, spends some
// (and retries that spend to show idempotency), credits a lot that expires two seconds later,
// and waits on the WatchExpirations stream until that lot's EXPIRED event arrives. It asks the
// server to run expiry (RunExpiry) instead of waiting for the schedule.
//
// Usage: node client.js [HOST:PORT]   (default: $LOYALTY_ADDRESS or 127.0.0.1:50051)
// Exit code 0 when every step checked out, 1 otherwise.
"use strict";

const path = require("node:path");
const crypto = require("node:crypto");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");
const ADDRESS = process.argv[2] || process.env.LOYALTY_ADDRESS || "127.0.0.1:50051";
const CALL_TIMEOUT_MS = 10_000;
const EVENT_TIMEOUT_MS = 30_000;

// keepCase: field names as in the .proto (snake_case). longs as strings: int64 amounts do
// not fit a JS number in general. enums as their names. defaults: zero values are present.
const definition = protoLoader.loadSync(
  ["loyalty/v1/wallet.proto", "loyalty/v1/offer.proto"],
  { includeDirs: [PROTO_ROOT], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
);
const loyalty = grpc.loadPackageDefinition(definition).loyalty.v1;
const credentials = grpc.credentials.createInsecure();
// Every call carries the API key: `authorization: Bearer <key>` (env LOYALTY_API_KEY).
const API_KEY = process.env.LOYALTY_API_KEY || "";
function auth() {
  const metadata = new grpc.Metadata();
  metadata.add("authorization", `Bearer ${API_KEY}`);
  return metadata;
}
const wallets = new loyalty.WalletService(ADDRESS, credentials);
const offers = new loyalty.OfferService(ADDRESS, credentials);

// One run's ids: request ids and the scheme id must be new on every run, because the server
// replays (or refuses) a request_id it has seen before.
const RUN = `${Date.now().toString(36)}-${crypto.randomBytes(4).toString("hex")}`;
const requestId = (step) => `node-${RUN}-${step}`;

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + CALL_TIMEOUT_MS);
    client[method](request, auth(), { deadline }, (error, response) => {
      if (error) {
        // error.code is the gRPC status code; the google.rpc.Status with ErrorInfo (reason)
        // travels in the grpc-status-details-bin trailer: error.metadata.get(...).
        error.message = `${method} failed: ${grpc.status[error.code]} ${error.details}`;
        reject(error);
      } else {
        resolve(response);
      }
    });
  });
}

function timestamp(date) {
  const ms = date.getTime();
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Resolves with the first EXPIRED event of `lotId` on a stream of the wallet's events.
function watchForExpiry(walletId, lotId) {
  const stream = wallets.WatchExpirations({
    wallet_ids: [walletId],
    event_types: ["EXPIRATION_EVENT_TYPE_EXPIRED"],
    after_sequence: "0", // replay from the start: nothing is missed if it expired already
  }, auth());
  const seen = new Set(); // delivery is at least once: deduplicate on event_id
  const promise = new Promise((resolve, reject) => {
    stream.on("data", (message) => {
      if (message.message === "heartbeat") return;
      const event = message.event;
      if (seen.has(event.event_id)) return;
      seen.add(event.event_id);
      console.log(`event ${event.sequence}: ${event.type} lot ${event.lot_id} ${event.amount} ${event.asset}`);
      if (event.lot_id === lotId) resolve(event);
    });
    stream.on("error", (error) => {
      if (error.code !== grpc.status.CANCELLED) reject(error);
    });
    stream.on("end", () => reject(new Error("the stream ended before the event arrived")));
  });
  return { promise, cancel: () => stream.cancel() };
}

async function main() {
  console.log(`loyalty ledger at ${ADDRESS}, run ${RUN}`);
  await new Promise((resolve, reject) =>
    wallets.waitForReady(Date.now() + CALL_TIMEOUT_MS, (e) => (e ? reject(e) : resolve())),
  );

  const schemeId = `node-${RUN}`;
  await call(offers, "CreateScheme", {
    request_id: requestId("scheme"),
    scheme: {
      scheme_id: schemeId,
      name: "Node example",
      assets: [{ code: "POINTS", scale: 0 }, { code: "EUR", scale: 2 }],
      timezone: "Europe/Amsterdam",
    },
  });
  const { wallet } = await call(wallets, "CreateWallet", {
    request_id: requestId("wallet"),
    scheme_id: schemeId,
    customer_ref: `alice-${RUN}`,
  });
  console.log(`wallet ${wallet.wallet_id} in scheme ${schemeId}`);

  // 500 promotional points sponsored by shop-1, expiring 6 calendar months from now.
  const credit = await call(wallets, "Credit", {
    request_id: requestId("credit"),
    wallet_id: wallet.wallet_id,
    kind: "CREDIT_KIND_AWARD",
    asset: "POINTS",
    amount: "500",
    funding: "FUNDING_PROMOTIONAL",
    sponsor_id: "shop-1",
    expiry_policy: { after: { count: 6, unit: "DURATION_UNIT_MONTHS" } },
  });
  check(credit.lot.remaining === "500", "credit made a lot of 500 POINTS");

  const spendRequest = {
    request_id: requestId("spend"),
    wallet_id: wallet.wallet_id,
    asset: "POINTS",
    amount: "120",
    merchant_id: "shop-1",
    reference: "order-1",
  };
  const spend = await call(wallets, "Spend", spendRequest);
  check(spend.amount_spent === "120", "spent 120 POINTS");
  // A retry (say after a timeout) with the same request_id and request is a replay.
  const replay = await call(wallets, "Spend", spendRequest);
  check(
    replay.transaction.transaction_id === spend.transaction.transaction_id,
    "a retried spend returns the first transaction",
  );

  // 30 points that expire two seconds from now.
  const short = await call(wallets, "Credit", {
    request_id: requestId("credit-short"),
    wallet_id: wallet.wallet_id,
    kind: "CREDIT_KIND_AWARD",
    asset: "POINTS",
    amount: "30",
    funding: "FUNDING_PROMOTIONAL",
    sponsor_id: "shop-1",
    expire_time: timestamp(new Date(Date.now() + 2000)),
  });
  const lotId = short.lot.lot_id;

  const watch = watchForExpiry(wallet.wallet_id, lotId);
  const deadline = Date.now() + EVENT_TIMEOUT_MS;
  let event = null;
  let failure = null;
  watch.promise.then((e) => (event = e), (e) => (failure = e));
  try {
    // Run expiry until the event arrives (the server's own schedule may get there first).
    for (let attempt = 1; event === null; attempt++) {
      if (failure !== null) throw new Error(`WatchExpirations failed: ${failure.message}`);
      if (Date.now() > deadline) throw new Error("no EXPIRED event within the time limit");
      await sleep(1000);
      const { run } = await call(wallets, "RunExpiry", {
        request_id: requestId(`run-${attempt}`),
        kind: "RUN_KIND_EXPIRY",
      });
      console.log(`run ${run.run_id}: ${run.status}, ${run.items_processed} lots expired`);
      await Promise.race([watch.promise.catch(() => {}), sleep(500)]);
    }
    event = await watch.promise;
  } finally {
    watch.cancel();
  }
  check(event.type === "EXPIRATION_EVENT_TYPE_EXPIRED" && event.amount === "30", "EXPIRED event for the 30 points");

  const balance = await call(wallets, "GetBalance", { wallet_id: wallet.wallet_id, asset: "POINTS" });
  check(balance.balances[0].available === "380", "available balance is 500 - 120 = 380 POINTS");
}

main().then(
  () => {
    console.log("node example: OK");
    process.exit(0);
  },
  (error) => {
    console.error(`node example: FAILED: ${error.message}`);
    process.exit(1);
  },
);
