/** The options every pipeline-level benchmark takes: --json, --quick, --help (exits on --help or a bad option). */
export function benchArgs(name: string): { json: boolean; quick: boolean } {
  const help = `npm run ${name} -- [--json] [--quick]

  --json    the last line of stdout is one JSON object with the figures
  --quick   shorter runs (a smoke run; figures are noisier)
`;
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(help);
    process.exit(0);
  }
  const bad = argv.filter((a) => !['--json', '--quick'].includes(a));
  if (bad.length) {
    process.stderr.write(`${name}: unknown options ${bad.join(' ')}\n\n${help}`);
    process.exit(2);
  }
  return { json: argv.includes('--json'), quick: argv.includes('--quick') };
}
