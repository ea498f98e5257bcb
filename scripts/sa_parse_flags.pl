#!/usr/bin/perl
# Prints the flags SpamAssassin's message parser (Mail::SpamAssassin::Message) leaves on each
# message, the ones MIMEEval's check_msg_parse_flags reads, one line per message that has any:
# FILE<TAB>flag,flag. mxgate's rules/sa_parse.rs finds the same flags by walking the lines as
# Message.pm does; this is what it is checked against (BENCHMARKS.md).
#
#   scripts/sa_parse_flags.pl FILE...
use strict;
use warnings;
use Mail::SpamAssassin;

my @flags = qw(truncated_header missing_head_body_separator missing_mime_head_body_separator
               missing_mime_headers mime_epilogue_exists);
my $sa = Mail::SpamAssassin->new({local_tests_only => 1, dont_copy_prefs => 1,
                                  userprefs_filename => '/dev/null'});
$sa->init(1);
my @files = @ARGV;
if (!@files) { chomp(@files = <STDIN>); }
for my $f (@files) {
    my $raw;
    {
        # Slurped in a block of its own: the parser's chomp needs $/ as it is.
        open(my $fh, '<', $f) or do { warn "$f: $!\n"; next };
        local $/;
        $raw = <$fh>;
    }
    my $msg = $sa->parse($raw, 1);
    my @on = grep { defined $msg->{$_} } @flags;
    print "$f\t", join(",", @on), "\n" if @on;
    $msg->finish;
}
