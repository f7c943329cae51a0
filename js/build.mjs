// Bundle the explorer's front end into the package (no CDN at run time): node build.mjs
import { build } from "esbuild";

await build({
  entryPoints: ["src/explorer.js"],
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2020",
  legalComments: "eof",
  outfile: "../geoseg/explorer/static/explorer.js",
});
