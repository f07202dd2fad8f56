// node rule_vectors.mjs CASES.json: the JS exit rule on test vectors made by
// the Python tests. Each case {policy, probabilities: [K][N][C]} gives
// {exits: [N], scores: [K][N] or null}. Prints one JSON line.
//
// assignCases is also sent to the browser page (as its source text), so the
// rule is checked in both with the same code.

import { readFile } from 'node:fs/promises';

import * as api from '../../keras_dmpo/web/js/src/policy.js';

export function assignCases(api, cases) {
  return cases.map(({ policy, probabilities }) => {
    const rule = api.ExitPolicy.fromDict(policy);
    const samples = probabilities[0].map((_, n) => probabilities.map((exit) => exit[n]));
    const scores = rule.criterion === 'patience' ? null : probabilities.map((exit, k) => exit.map((p) => rule.score(k, p)));
    return { exits: samples.map((perExit) => rule.assign(perExit)), scores };
  });
}

if (process.argv[2]) {
  const cases = JSON.parse(await readFile(process.argv[2], 'utf8'));
  console.log(JSON.stringify(assignCases(api, cases)));
}
