// node_server.js - an event-loop runtime under checkpoint/restart (issue 12): a Node.js HTTP
// server on 127.0.0.1 (port chosen by the kernel) answering "count N" with a counter a 20 ms
// setInterval advances. Prints "port P" and READY; when $CR_TEST_GO exists it prints
// "PASS node_server N" and exits 0. The test drives it over HTTP before and after restart.
const http = require('http');
const fs = require('fs');
let n = 0;
setInterval(() => {
  n++;
  if (fs.existsSync(process.env.CR_TEST_GO)) {
    console.log('PASS node_server ' + n);
    process.exit(0);
  }
}, 20);
http
  .createServer((req, res) => res.end('count ' + n + '\n'))
  .listen(0, '127.0.0.1', function () {
    console.log('port ' + this.address().port);
    console.log('READY');
  });
