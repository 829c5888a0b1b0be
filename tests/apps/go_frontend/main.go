// A Go frontend for loupe's integration tests: every request is passed on to the upstream
// at the same path, over net/http's pool of keep-alive connections, and answered once the
// upstream has answered. Usage: go-frontend LISTEN_ADDR UPSTREAM_URL
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go-frontend LISTEN_ADDR UPSTREAM_URL")
		os.Exit(2)
	}
	listen, upstream := os.Args[1], os.Args[2]
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get(upstream + r.URL.Path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Fprintf(w, "upstream answered %d\n", resp.StatusCode)
	})
	if err := http.ListenAndServe(listen, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
