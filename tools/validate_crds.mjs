// Validates custom resources against the models of their operator version,
// from the npm packages installed (pinned) under .tools/ by the Makefile.
// stdin: [{"path": ..., "manifest": {...}}]; stdout: {path: [error, ...] | null}
// (null: no model for that apiVersion/kind). Used by tools/crds.py.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [toolsDir] = process.argv.slice(2);
const MODELS = {
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
  "karpenter.sh/v1": "@kubernetes-models/karpenter/karpenter.sh/v1",
  "karpenter.k8s.aws/v1": "@kubernetes-models/karpenter/karpenter.k8s.aws/v1",
  "karpenter.sh/v1alpha1": "@kubernetes-models/karpenter/karpenter.sh/v1alpha1",
};

function describe(error) {
  const where = (error.instancePath || "").replace(/^\//, "").replace(/\/(\d+)(?=\/|$)/g, "[$1]").replace(/\//g, ".");
  const extra = error.params && error.params.allowedValues ? ` (${error.params.allowedValues.join(", ")})` : "";
  return { path: where || "(root)", message: `${error.message}${extra}` };
}

const input = JSON.parse(readFileSync(0, "utf8"));
const out = {};
for (const { path, manifest } of input) {
  const base = MODELS[manifest.apiVersion];
  if (!base || !/^[A-Za-z][A-Za-z0-9]*$/.test(manifest.kind)) {
    out[path] = null;
    continue;
  }
  let Model;
  try {
    const module = await import(pathToFileURL(join(toolsDir, "node_modules", base, `${manifest.kind}.js`)).href);
    Model = module[manifest.kind];
  } catch {
    out[path] = null;
    continue;
  }
  try {
    new Model(manifest).validate();
    out[path] = [];
  } catch (error) {
    const errors = Array.isArray(error.errors) ? error.errors : [{ instancePath: "", message: error.message }];
    out[path] = errors.map(describe);
  }
}
process.stdout.write(JSON.stringify(out));
