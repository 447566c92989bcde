module baton.example/go-handoff

go 1.19
