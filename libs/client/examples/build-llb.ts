// examples/build-llb.ts: builds an LLB graph made with @kiln/llb (the directory ./src copied into
// a base image, then a RUN over it) and writes it as an OCI image tarball, printing each step.
import { KilnClient } from '@kiln/client';
import { copy, image, local, marshal } from '@kiln/llb';

const base = image(process.env.BASE_IMAGE ?? 'docker.io/library/busybox:latest');
// local('src') names a directory of the build's session: no session id needed.
const withSrc = base.file(copy(local('src'), '/', '/src/'));
const built = withSrc.run({ args: ['sh', '-c', 'wc -c < /src/hello.txt > /size'] }).root();

const client = await KilnClient.connect(process.env.KILN_ADDR ?? '127.0.0.1:8470');
try {
  const result = await client.build({
    definition: marshal(built),
    localDirs: { src: './src' },
    outputs: [{ type: 'oci', dest: './image.tar', name: 'example.com/size:1' }],
    onProgress: (e) => {
      if (e.type === 'vertex.cached') console.log(`CACHED ${e.name}`);
      if (e.type === 'vertex.completed') console.log(`DONE ${e.name} (${e.durationMs} ms)`);
      if (e.type === 'vertex.log') process.stdout.write(e.text);
    },
  });
  console.log(`wrote ./image.tar (build ${result.buildId})`);
} finally {
  client.close();
}
