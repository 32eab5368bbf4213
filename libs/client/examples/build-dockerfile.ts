// examples/build-dockerfile.ts: builds ./app/Dockerfile with a build argument and a secret,
// shows BuildKit-style progress, writes the result's files into ./out and the image as a docker
// tarball to a stream.
import { createWriteStream } from 'node:fs';
import { KilnClient } from '@kiln/client';
import { createPrinter } from '@kiln/client/progress';

const client = await KilnClient.connect(process.env.KILN_ADDR ?? '127.0.0.1:8470');
const printer = createPrinter('auto', process.stderr);
try {
  const result = await client.build({
    context: './app',
    buildArgs: { GREETING: 'hello' },
    secrets: { token: { env: 'API_TOKEN' } }, // RUN --mount=type=secret,id=token
    outputs: [
      { type: 'local', dest: './out' },
      { type: 'docker', dest: createWriteStream('./app.tar'), name: 'example.com/app:1' },
    ],
    onProgress: printer.onEvent,
  });
  console.log(`build ${result.buildId} done`);
} finally {
  printer.finish();
  client.close();
}
