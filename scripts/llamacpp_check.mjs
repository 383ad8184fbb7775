// Runs a GGUF model in a real llama.cpp (the prebuilt CPU build of the npm package node-llama-cpp 3.21.1,
// installed by scripts/setup.sh into a cache folder linked as `.node-llama-cpp`) and prints what it computes
// as JSON on stdout. The tests (tests/llamacpp.rs) compare it with tch-rpo.
//
// Usage: node scripts/llamacpp_check.mjs REQUEST.json
//
// REQUEST:
//   {
//     "model": "base.gguf",
//     "lora": {"path": "adapter.gguf", "scale": 1.0},      optional: one LoRA adapter GGUF on the model
//     "vocab_only": false,                                  optional: load the tokenizer only (no weights)
//     "tokenize": ["text", ...],                            optional
//     "generate": [{"prompt": [ids], "n": 16, "top_k": 8}]  optional
//   }
// Output:
//   {
//     "bos": id | null, "eos": id | null, "add_bos": bool,  llama.cpp's BOS/EOS and whether it prepends BOS
//     "tokenize": [{"plain": [ids], "special": [ids]}],     llama_tokenize without BOS/EOS, with special-token
//                                                           parsing off ("plain") and on ("special")
//     "generate": [{"tokens": [ids], "top": [[[id, logprob], ...], ...]}]
//   }
// The context keeps keys and values in f32 (not llama.cpp's default f16) and does not use flash attention.
// Generation is greedy (no repeat penalty) and evaluates the prompt ids as given (no BOS added); `top[s]` lists
// the `top_k` most likely next tokens at step s, best first, with their log-softmax over those `top_k` raw
// logits (computed in f32): differences between them are llama.cpp's logit differences. `tokens[s]` is the
// argmax at step s and is fed back for step s + 1; an end-of-generation token does not stop it.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

function fail(message) {
  process.stderr.write(`llamacpp_check: ${message}\n`);
  process.exit(1);
}

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const install = process.env.TCH_RPO_NODE_LLAMA_CPP ?? join(root, ".node-llama-cpp");
const entry = join(install, "node_modules/node-llama-cpp/dist/index.js");
if (!existsSync(entry)) {
  fail(`${entry} not found: run \`bash scripts/setup.sh\` (it installs node-llama-cpp 3.21.1 and links it as .node-llama-cpp)`);
}
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);

if (process.argv.length !== 3) {
  fail("usage: node scripts/llamacpp_check.mjs REQUEST.json");
}
const request = JSON.parse(readFileSync(process.argv[2], "utf8"));
if (typeof request.model !== "string") {
  fail("the request has no \"model\" path");
}

// The prebuilt CPU binary only: no GPU, no build from source, no download.
const llama = await getLlama({
  gpu: false,
  build: "never",
  usePrebuiltBinaries: true,
  skipDownload: true,
  progressLogs: false,
  logLevel: LlamaLogLevel.error,
});
const model = await llama.loadModel({ modelPath: request.model, vocabOnly: request.vocab_only === true });

const out = {
  bos: model.tokens.bos,
  eos: model.tokens.eos,
  add_bos: model.tokens.shouldPrependBosToken,
  tokenize: (request.tokenize ?? []).map((text) => ({
    plain: Array.from(model.tokenize(text, false)),
    special: Array.from(model.tokenize(text, true)),
  })),
  generate: [],
};

if ((request.generate ?? []).length > 0) {
  const longest = Math.max(...request.generate.map((g) => g.prompt.length + g.n));
  const context = await model.createContext({
    contextSize: Math.max(256, longest + 8),
    sequences: 1,
    threads: 1,
    // f32 keys and values and no flash attention: the cache adds no f16 rounding of its own.
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
    flashAttention: false,
    swaFullCache: true,
    lora: request.lora ? { adapters: [{ filePath: request.lora.path, scale: request.lora.scale ?? 1 }] } : undefined,
  });
  const sequence = context.getSequence();
  for (const { prompt, n, top_k: topK = 8 } of request.generate) {
    // Sampler chain: top-k, then temperature 1 (the logits unchanged); no penalty. node-llama-cpp returns
    // softmax over the kept candidates, so log p_i − log p_j is llama.cpp's logit difference. The token
    // fed back is the first candidate (the argmax); the sampled one is ignored. (A full-vocabulary
    // probability list costs ~0.7 s per step for a 262,144-token vocabulary.)
    const next = { generateNext: { token: true, probabilities: true, options: { temperature: 1, topK, seed: 0 } } };
    if (!Array.isArray(prompt) || prompt.length === 0 || !(n > 0)) {
      fail("each \"generate\" item needs a non-empty \"prompt\" id list and \"n\" > 0");
    }
    await sequence.clearHistory();
    const tokens = [];
    const top = [];
    let input = prompt.map((id, i) => (i + 1 === prompt.length ? [id, next] : id));
    for (let step = 0; step < n; step++) {
      const results = await sequence.controlledEvaluate(input);
      const result = results[input.length - 1];
      if (result?.next?.token == null || result.next.probabilities == null) {
        fail(`no next token at step ${step}`);
      }
      const best = [];
      for (const [id, p] of result.next.probabilities) {
        if (best.length === topK) break;
        best.push([id, Math.log(p)]);
      }
      tokens.push(best[0][0]);
      top.push(best);
      input = [[best[0][0], next]];
    }
    out.generate.push({ tokens, top });
  }
  await context.dispose();
}
await model.dispose();
await llama.dispose();
process.stdout.write(JSON.stringify(out) + "\n");
