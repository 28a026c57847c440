// Calls the banditspec controller from Node.js. The stubs come from proto/ alone, at run time.
//
//   node generate.js [--address 127.0.0.1:50050] [--max-new-tokens 32] [--token-ids 1,2,3 | TEXT]
//
// Prints the GenerateResponse as JSON (token ids, text, finish reason, the bandit's statistics).
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");

function parseArgs(argv) {
  const args = { address: "127.0.0.1:50050", maxNewTokens: 32, tokenIds: null, text: null, deadlineSeconds: 120 };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    if (flag === "--address") args.address = argv[++i];
    else if (flag === "--max-new-tokens") args.maxNewTokens = Number(argv[++i]);
    else if (flag === "--token-ids") args.tokenIds = argv[++i].split(",").map(Number);
    else if (flag === "--deadline-seconds") args.deadlineSeconds = Number(argv[++i]);
    else args.text = flag;
  }
  if (args.tokenIds === null && args.text === null) throw new Error("give a prompt: TEXT or --token-ids 1,2,3");
  return args;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const definition = protoLoader.loadSync("banditspec/v1/generation.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const { GenerationService } = grpc.loadPackageDefinition(definition).banditspec.v1;
  const client = new GenerationService(args.address, grpc.credentials.createInsecure());
  const request = { max_new_tokens: args.maxNewTokens };
  if (args.tokenIds !== null) request.token_ids = { ids: args.tokenIds };
  else request.text = args.text;
  const deadline = new Date(Date.now() + args.deadlineSeconds * 1000);
  client.Generate(request, { deadline }, (error, response) => {
    client.close();
    if (error) {
      console.error(`${grpc.status[error.code]}: ${error.details}`);
      process.exit(1);
    }
    console.log(JSON.stringify(response));
  });
}

main();
