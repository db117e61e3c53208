// Renders an Ollama TEMPLATE with Go's own text/template, the engine Ollama runs it on, without a model server.
//
//	go run tests/data/render_go_template.go lib/alfworld_sft/templates/ollama_chatml.gotmpl \
//	    < lib/alfworld_sft/templates/families.json
//
// stdin is a JSON object whose "conversation" is a list of {"role": ..., "content": ...} messages (families.json
// holds the golden one); stdout is the rendered prompt. The data has the
// shape Ollama's chat handler gives a template: .Messages (Role, Content), .System (the system messages' text)
// and an empty .Response. Consecutive messages of one role, which Ollama merges first, are refused instead.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go run render_go_template.go TEMPLATE < families.json")
		os.Exit(2)
	}
	source, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tmpl, err := template.New("ollama").Parse(string(source))
	if err != nil {
		fmt.Fprintln(os.Stderr, "template:", err)
		os.Exit(1)
	}
	var input struct {
		Conversation []message `json:"conversation"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&input); err != nil {
		fmt.Fprintln(os.Stderr, "conversation:", err)
		os.Exit(1)
	}
	messages := input.Conversation
	var system []string
	for i, m := range messages {
		if i > 0 && messages[i-1].Role == m.Role {
			fmt.Fprintln(os.Stderr, "conversation: two", m.Role, "messages in a row")
			os.Exit(1)
		}
		if m.Role == "system" {
			system = append(system, m.Content)
		}
	}
	data := map[string]any{"Messages": messages, "System": strings.Join(system, "\n\n"), "Response": ""}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}
