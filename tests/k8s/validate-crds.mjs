// Validates monitoring.coreos.com objects with prometheus-operator's own schemas, as compiled by
// @kubernetes-models/prometheus-operator from the operator's CRDs. Reads a JSON array of objects
// on stdin; prints a JSON array of problems, one string each. Run from the folder where
// scripts/test.sh installed the package (.cache/k8s-crds), with --input-type=module.
import { readFileSync } from "node:fs";

const objects = JSON.parse(readFileSync(0, "utf8"));
const problems = [];
for (const object of objects) {
  const where = `${object.kind}/${object.metadata?.name}`;
  const [group, version] = String(object.apiVersion).split("/");
  if (group !== "monitoring.coreos.com") {
    problems.push(`${where}: not a monitoring.coreos.com object (${object.apiVersion})`);
    continue;
  }
  let model;
  try {
    model = await import(`@kubernetes-models/prometheus-operator/${group}/${version}/${object.kind}`);
  } catch (error) {
    problems.push(`${where}: no schema for ${object.apiVersion} ${object.kind}`);
    continue;
  }
  try {
    new model[object.kind](object).validate();
  } catch (error) {
    problems.push(`${where}: ${error.message}`);
  }
}
process.stdout.write(JSON.stringify(problems));
