package main

import (
	"encoding/json"
	"net/http"
	"time"
)

var apiClient = &http.Client{Timeout: time.Second}

// apiGet GETs a REST API URL and returns the status and JSON body.
func apiGet(url string) (int, map[string]any) {
	resp, err := apiClient.Get(url)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}
