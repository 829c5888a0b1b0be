module loupe.test/go-frontend

go 1.19
