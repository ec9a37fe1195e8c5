// Runs the ORIGINAL face-api JavaScript library (@vladmandic/face-api@1.7.15, tfjs CPU backend,
// pure JS, no native add-ons, no canvas, no fetch) on fixed inputs and writes small JSON "golden"
// fixtures to models/tests/fixtures/faceapi/, which Rollcall's Rust tests compare against.
//
// Usage: node generate.mjs   (see generate.sh; expects scripts/fetch-assets.sh to have run)
// Env:   ROLLCALL_ASSETS_DIR / ROLLCALL_MODEL_DIR as in scripts/fetch-assets.sh.

import fs from 'node:fs';
import path from 'node:path';
import util from 'node:util';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const assets = process.env.ROLLCALL_ASSETS_DIR || path.join(repo, 'assets');
const modelDir = process.env.ROLLCALL_MODEL_DIR || path.join(assets, 'face-api');
const weightsDir = path.join(modelDir, 'model');
const demoDir = path.join(modelDir, 'demo');
const outDir = path.join(repo, 'models', 'tests', 'fixtures', 'faceapi');

const require = createRequire(import.meta.url);
const jpeg = require('jpeg-js');

// ---------------------------------------------------------------------------------------------
// Load face-api's browser bundle (dist/face-api.js, tfjs 4.22 with the cpu backend bundled).
// Both bundled builds (face-api.js, face-api.esm.js) stub out node's 'util' module, so tfjs'
// node platform constructor crashes when it detects Node. We evaluate the bundle with a
// `process` whose `versions.node` is hidden (so tfjs registers no platform), then install a
// minimal node platform ourselves. Nothing here changes any numerical kernel.
// ---------------------------------------------------------------------------------------------
function loadFaceApi() {
  const bundle = require.resolve('@vladmandic/face-api/dist/face-api.js');
  const src = fs.readFileSync(bundle, 'utf8');
  const hiddenNodeProcess = Object.create(process, { versions: { value: {} } });
  // eslint-disable-next-line no-new-func
  const faceapi = new Function('require', 'process', `${src}\nreturn faceapi;`)(require, hiddenNodeProcess);
  const te = new util.TextEncoder();
  faceapi.tf.env().setPlatform('node', {
    fetch: () => { throw new Error('fetch is disabled in the golden generator'); },
    now: () => { const t = process.hrtime(); return t[0] * 1e3 + t[1] / 1e6; },
    encode: (s) => te.encode(s),
    decode: (b, enc) => (b.length === 0 ? '' : new util.TextDecoder(enc).decode(b)),
    isTypedArray: (a) => util.types.isFloat32Array(a) || util.types.isInt32Array(a)
      || util.types.isUint8Array(a) || util.types.isUint8ClampedArray(a),
  });
  // face-api's own environment (only used for canvas/media inputs, which we never pass)
  faceapi.env.setEnv(faceapi.env.createNodejsEnv());
  return faceapi;
}

const faceapi = loadFaceApi();
const { tf } = faceapi;

// Reads <name>-weights_manifest.json and its .bin shards from disk and decodes them with tfjs
// (handles the uint8 quantisation exactly as tf.io.loadWeights would).
function loadWeightMap(name) {
  const manifest = JSON.parse(fs.readFileSync(path.join(weightsDir, `${name}-weights_manifest.json`), 'utf8'));
  const weightMap = {};
  for (const group of manifest) {
    const bufs = group.paths.map((p) => fs.readFileSync(path.join(weightsDir, p)));
    const all = Buffer.concat(bufs);
    const ab = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
    Object.assign(weightMap, tf.io.decodeWeights(ab, group.weights));
  }
  return weightMap;
}

// ---------------------------------------------------------------------------------------------
// Output helpers
// ---------------------------------------------------------------------------------------------
const r6 = (v) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`non-finite value ${v}`);
  const r = Number(n.toPrecision(6));
  return Object.is(r, -0) ? 0 : r;
};
const pt = (p) => [r6(p.x), r6(p.y)];
const box = (b) => ({ x: r6(b.x), y: r6(b.y), width: r6(b.width), height: r6(b.height) });
const intBox = (b) => {
  for (const k of ['x', 'y', 'width', 'height']) if (!Number.isInteger(b[k])) throw new Error(`non-integer crop box ${JSON.stringify(b)}`);
  return { x: b.x, y: b.y, width: b.width, height: b.height };
};

// Pretty JSON with arrays of scalars / small arrays of scalars kept on one line.
function fmt(v, ind = '') {
  const inner = `${ind}  `;
  const isScalar = (x) => x === null || typeof x !== 'object';
  if (isScalar(v)) return JSON.stringify(v);
  if (Array.isArray(v)) {
    if (v.every(isScalar)) return `[${v.map((x) => JSON.stringify(x)).join(', ')}]`;
    if (v.every((x) => Array.isArray(x) && x.every(isScalar))) return `[${v.map((x) => fmt(x)).join(', ')}]`;
    if (v.length === 0) return '[]';
    return `[\n${v.map((x) => inner + fmt(x, inner)).join(',\n')}\n${ind}]`;
  }
  const keys = Object.keys(v);
  if (keys.every((k) => isScalar(v[k])) && keys.length <= 6) return `{${keys.map((k) => `${JSON.stringify(k)}: ${JSON.stringify(v[k])}`).join(', ')}}`;
  return `{\n${keys.map((k) => `${inner}${JSON.stringify(k)}: ${fmt(v[k], inner)}`).join(',\n')}\n${ind}}`;
}
function write(name, obj) {
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, name);
  fs.writeFileSync(file, `${fmt(obj)}\n`);
  console.log(`wrote ${path.relative(repo, file)} (${fs.statSync(file).size} bytes)`);
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------
const FORMULA = '(x*7 + y*13 + c*29) % 256';
function formulaTensor(size) {
  const data = new Float32Array(size * size * 3);
  for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) for (let c = 0; c < 3; c++) {
    data[(y * size + x) * 3 + c] = (x * 7 + y * 13 + c * 29) % 256;
  }
  return tf.tensor3d(data, [size, size, 3], 'float32');
}

function decodeJpeg(file) {
  const raw = jpeg.decode(fs.readFileSync(file), { useTArray: true, formatAsRGBA: false, maxMemoryUsageInMB: 1024 });
  const { width, height, data } = raw;
  if (data.length !== width * height * 3) throw new Error(`${file}: unexpected decoded length ${data.length}`);
  let sum = 0;
  for (let i = 0; i < data.length; i++) sum += data[i];
  return { width, height, sum, tensor: tf.tensor3d(Int32Array.from(data), [height, width, 3], 'int32') };
}

// ---------------------------------------------------------------------------------------------
async function main() {
  await tf.setBackend('cpu');
  await tf.ready();
  if (tf.getBackend() !== 'cpu') throw new Error(`backend is ${tf.getBackend()}, expected cpu`);

  const { nets } = faceapi;
  nets.ssdMobilenetv1.loadFromWeightMap(loadWeightMap('ssd_mobilenetv1_model'));
  nets.tinyFaceDetector.loadFromWeightMap(loadWeightMap('tiny_face_detector_model'));
  nets.faceLandmark68Net.loadFromWeightMap(loadWeightMap('face_landmark_68_model'));
  nets.faceRecognitionNet.loadFromWeightMap(loadWeightMap('face_recognition_model'));

  const only = process.argv[2]; // optional: 'fixed' or 'samples'

  // ---------------- fixed.json: pure network checks on the synthetic formula input -----------
  if (!only || only === 'fixed') {
    const fixed = { formula: FORMULA };

    const t150 = formulaTensor(150);
    const desc = await nets.faceRecognitionNet.computeFaceDescriptor(t150);
    fixed.recognition = { size: 150, descriptor: Array.from(desc, r6) };
    t150.dispose();

    const t112 = formulaTensor(112);
    const lm = await nets.faceLandmark68Net.detectLandmarks(t112);
    fixed.landmarks = { size: 112, points: lm.positions.map(pt) };
    t112.dispose();

    const t512 = formulaTensor(512);
    const { boxes, scores } = await nets.ssdMobilenetv1.forward(t512);
    const s = Array.from(scores[0].dataSync());
    const b = boxes[0].arraySync();
    const order = s.map((v, i) => i).sort((i, j) => (s[j] - s[i]) || (i - j)).slice(0, 20);
    fixed.ssd_raw = {
      size: 512,
      num_anchors: s.length,
      top_scores: order.map((i) => [i, r6(s[i])]),
      boxes_of_top: order.map((i) => b[i].map(r6)),
    };
    boxes.forEach((x) => x.dispose());
    scores.forEach((x) => x.dispose());
    t512.dispose();

    const t416 = formulaTensor(416);
    const out = await nets.tinyFaceDetector.forward(t416, 416);
    fixed.tiny_raw = {
      size: 416,
      output_shape: out.shape,
      output_sample: Array.from(out.dataSync().slice(0, 50), r6),
    };
    out.dispose();
    t416.dispose();

    write('fixed.json', fixed);
  }

  // ---------------- sampleN.json: the face-api demo photos ----------------------------------
  if (!only || only === 'samples') {
    for (let n = 1; n <= 6; n++) {
      const image = `sample${n}.jpg`;
      const img = decodeJpeg(path.join(demoDir, image));
      const t = img.tensor;

      const ssdOptions = { minConfidence: 0.5, maxResults: 100 };
      const results = await faceapi
        .detectAllFaces(t, new faceapi.SsdMobilenetv1Options(ssdOptions))
        .withFaceLandmarks()
        .withFaceDescriptors();
      const faces = results.map((r) => {
        // the crop DetectAllFaceLandmarksTask slices (extractFaceTensors on r.detection)
        const lmBox = r.detection.forSize(img.width, img.height).box.clipAtImageBorders(img.width, img.height);
        // the crop ComputeAllFaceDescriptorsTask slices: landmarks.align(null, {useDlibAlignment: true}),
        // a Rect (not a FaceDetection), then clipAtImageBorders in extractFaceTensors
        const descBox = r.landmarks.align(null, { useDlibAlignment: true }).clipAtImageBorders(img.width, img.height);
        return {
          box: box(r.detection.box),
          score: r6(r.detection.score),
          landmarks: r.landmarks.positions.map(pt),
          landmarks_box: intBox(lmBox),
          descriptor_box: intBox(descBox),
          descriptor: Array.from(r.descriptor, r6),
        };
      });

      const tinyOptions = { inputSize: 416, scoreThreshold: 0.5 };
      const tiny = await faceapi.detectAllFaces(t, new faceapi.TinyFaceDetectorOptions(tinyOptions));

      write(`sample${n}.json`, {
        image,
        width: img.width,
        height: img.height,
        pixel_sum: img.sum,
        ssd: { min_confidence: 0.5, max_results: 100, faces },
        tiny: {
          input_size: 416,
          score_threshold: 0.5,
          faces: tiny.map((d) => ({ box: box(d.box), score: r6(d.score) })),
        },
      });
      t.dispose();
    }
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
