// Command httpd is a plain HTTP file server for the bulk benchmarks: the
// standard library's http.FileServer, which answers Range requests, so a
// multi-connection downloader (aria2c -x 8) can fetch one file over several
// connections (python3 -m http.server cannot: it ignores Range).
package main

import (
	"flag"
	"log"
	"net/http"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	dir := flag.String("dir", ".", "directory to serve")
	flag.Parse()
	log.Fatal(http.ListenAndServe(*addr, http.FileServer(http.Dir(*dir))))
}
