// examples/low-level.ts: the calls client.build makes, for callers that need them: a session
// serving the context, a Solve naming it, the status stream, the artifacts, then the close.
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { KilnClient, atomicFileWriter, dockerfileInput } from '@kiln/client';
import { StatusEvents, createPrinter } from '@kiln/client/progress';

const client = await KilnClient.connect(process.env.KILN_ADDR ?? '127.0.0.1:8470');
const session = client.session({
  localDirs: { context: './app' }, // the Dockerfile frontend's local://context
  secrets: (id) => Promise.resolve(id === 'token' ? Buffer.from('s3cr3t') : undefined),
  onExport: (index) => atomicFileWriter(`./out-${index}.tar`),
});
const printer = createPrinter('plain', process.stderr);
const buildId = randomUUID(); // the build's ref: the status stream follows it
const events = new StatusEvents(printer.onEvent);
const progress = (async () => {
  for await (const frame of client.status(buildId)) events.push(frame); // ends with the build
})();
try {
  const res = await client.solve({
    buildId,
    sessionId: session.id,
    frontend: 'dockerfile.v0',
    attrs: { 'build-arg:GREETING': 'hi' },
    inputs: { dockerfile: dockerfileInput(await readFile('./app/Dockerfile')) },
    exporters: [{ type: 'tar' }],
  });
  await session.exportsWritten(Number(res.exporterResponse['export.count'] ?? 0));
  await progress;
} finally {
  printer.finish();
  session.close();
  client.close();
}
